// RMSNorm and fused residual-add + RMSNorm: one block per row, 16-byte loads when the row layout allows.
// Memory-bound: x (and residual) are read once, the second pass re-reads the row from L1/L2.
#include <algorithm>

#include "../cuda_utils.cuh"
#include "../launch.cuh"
#include "ops.h"

namespace lite_srt {
namespace {

template <typename T, typename W, int VEC>
__global__ void rmsnorm_kernel(RmsNormArgs a) {
  pdl_wait();  // launch.cuh: nothing of the previous kernel's is touched before this
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(a.x) + row * a.x_stride;
  T* res = a.residual ? static_cast<T*>(a.residual) + row * a.residual_stride : nullptr;
  T* out = static_cast<T*>(a.out) + row * a.out_stride;
  const W* w = static_cast<const W*>(a.weight);
  const int64_t n_vec = a.hidden / VEC;

  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < n_vec; i += blockDim.x) {
    T v[VEC];
    *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(x + i * VEC);
    if (res != nullptr) {
      T r[VEC];
      *reinterpret_cast<uint4*>(r) = *reinterpret_cast<const uint4*>(res + i * VEC);
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[e] = from_float<T>(to_float(r[e]) + to_float(v[e]));  // rounded like torch
      *reinterpret_cast<uint4*>(res + i * VEC) = *reinterpret_cast<uint4*>(v);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) sum_sq += to_float(v[e]) * to_float(v[e]);
  }
  const float inv = rsqrtf(block_reduce_sum(sum_sq) / static_cast<float>(a.hidden) + a.eps);
  const T* src = res != nullptr ? res : x;
  for (int64_t i = threadIdx.x; i < n_vec; i += blockDim.x) {
    T v[VEC];
    *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(src + i * VEC);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = from_float<T>(to_float(v[e]) * inv * to_float(w[i * VEC + e]));
    *reinterpret_cast<uint4*>(out + i * VEC) = *reinterpret_cast<uint4*>(v);
  }
}

// Same algorithm one element at a time, for rows whose size or strides are not 16-byte multiples.
template <typename T, typename W>
__global__ void rmsnorm_scalar_kernel(RmsNormArgs a) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(a.x) + row * a.x_stride;
  T* res = a.residual ? static_cast<T*>(a.residual) + row * a.residual_stride : nullptr;
  T* out = static_cast<T*>(a.out) + row * a.out_stride;
  const W* w = static_cast<const W*>(a.weight);
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < a.hidden; i += blockDim.x) {
    T v = x[i];
    if (res != nullptr) {
      v = from_float<T>(to_float(res[i]) + to_float(v));
      res[i] = v;
    }
    sum_sq += to_float(v) * to_float(v);
  }
  const float inv = rsqrtf(block_reduce_sum(sum_sq) / static_cast<float>(a.hidden) + a.eps);
  const T* src = res != nullptr ? res : x;
  for (int64_t i = threadIdx.x; i < a.hidden; i += blockDim.x) {
    out[i] = from_float<T>(to_float(src[i]) * inv * to_float(w[i]));
  }
}

template <typename T>
bool rows_aligned(const RmsNormArgs& a) {
  constexpr int kVec = 16 / sizeof(T);
  bool ok = a.hidden % kVec == 0 && a.x_stride % kVec == 0 && a.out_stride % kVec == 0 && aligned16(a.x) &&
            aligned16(a.out);
  if (a.residual != nullptr) ok = ok && a.residual_stride % kVec == 0 && aligned16(a.residual);
  return ok;
}

template <typename T, typename W>
void launch_typed(const RmsNormArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = rows_aligned<T>(a);
  const int64_t work = vec ? a.hidden / kVec : a.hidden;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(WARP_SIZE, ceil_div(work, WARP_SIZE) * WARP_SIZE)));
  if (vec) {
    launch_kernel(rmsnorm_kernel<T, W, kVec>, a.rows, threads, 0, stream, a);
  } else {
    launch_kernel(rmsnorm_scalar_kernel<T, W>, a.rows, threads, 0, stream, a);
  }
}

}  // namespace

void launch_rmsnorm(const RmsNormArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (a.weight_dtype == DType::kFloat32) {
      launch_typed<T, float>(a, stream);
    } else {
      launch_typed<T, T>(a, stream);
    }
  });
  check_launch("rmsnorm");
}

}  // namespace lite_srt
