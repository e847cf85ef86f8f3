// SiLU-and-mul: out = silu(gate) * up for x = [gate | up]; grid = rows (x, up to 2^31-1) x column chunks (y),
// 16-byte packs. Rows go on x because a prefill can exceed y's 65535 limit.
#include <algorithm>

#include "../cuda_utils.cuh"
#include "../launch.cuh"
#include "ops.h"

namespace lite_srt {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

template <typename T, int VEC>
__global__ void silu_and_mul_kernel(SiluAndMulArgs a) {
  pdl_wait();  // launch.cuh: nothing of the previous kernel's is touched before this
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const int64_t i = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * VEC;
  if (i >= a.inter) return;
  const T* gate = static_cast<const T*>(a.x) + row * a.x_stride;
  const T* up = gate + a.inter;
  T* out = static_cast<T*>(a.out) + row * a.out_stride;
  if constexpr (VEC > 1) {
    const Pack16<T> g = load_pack(gate + i);
    const Pack16<T> u = load_pack(up + i);
    Pack16<T> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[e] = from_float<T>(silu_mul(to_float(g[e]), to_float(u[e])));
    store_pack(out + i, o);
  } else {
    out[i] = from_float<T>(silu_mul(to_float(gate[i]), to_float(up[i])));
  }
}

}  // namespace

void launch_silu_and_mul(const SiluAndMulArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.inter == 0) return;
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    const bool vec = a.inter % kVec == 0 && a.x_stride % kVec == 0 && a.out_stride % kVec == 0 && aligned16(a.x) &&
                     aligned16(a.out);
    const int per_block = kThreads * (vec ? kVec : 1);
    const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(ceil_div(a.inter, per_block)));
    if (vec) {
      launch_kernel(silu_and_mul_kernel<T, kVec>, grid, kThreads, 0, stream, a);
    } else {
      launch_kernel(silu_and_mul_kernel<T, 1>, grid, kThreads, 0, stream, a);
    }
  });
  check_launch("silu_and_mul");
}

}  // namespace lite_srt
