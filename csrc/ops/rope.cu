// RoPE in place on q and k: one block per token, one thread per rotated pair across all q and k heads.
// The cos/sin row is shared by every head of the token, so it is read once into shared memory.
#include <algorithm>

#include "../cuda_utils.cuh"
#include "../launch.cuh"
#include "ops.h"

namespace lite_srt {
namespace {

template <typename T>
__global__ void rope_kernel(RopeArgs a) {
  extern __shared__ float cos_sin[];  // [head_dim] = cos(half) | sin(half)
  pdl_wait();  // launch.cuh: nothing of the previous kernel's is touched before this
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int64_t pos = a.positions[t];
  const int64_t half = a.head_dim / 2;
  for (int64_t i = threadIdx.x; i < a.head_dim; i += blockDim.x) cos_sin[i] = a.cos_sin[pos * a.head_dim + i];
  __syncthreads();
  const int64_t pairs = (a.q_heads + a.kv_heads) * half;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t head = p / half;
    const int64_t i = p % half;
    T* x = head < a.q_heads ? static_cast<T*>(a.q) + t * a.q_stride.row + head * a.q_stride.head
                            : static_cast<T*>(a.k) + t * a.k_stride.row + (head - a.q_heads) * a.k_stride.head;
    // neox pairs element i with i + half; interleaved (GPT-J) pairs 2i with 2i + 1.
    T* p1 = a.is_neox ? x + i : x + 2 * i;
    T* p2 = a.is_neox ? x + i + half : x + 2 * i + 1;
    const float x1 = to_float(*p1);
    const float x2 = to_float(*p2);
    const float c = cos_sin[i];
    const float s = cos_sin[half + i];
    *p1 = from_float<T>(x1 * c - x2 * s);
    *p2 = from_float<T>(x2 * c + x1 * s);
  }
}

}  // namespace

void launch_rotary_embedding(const RopeArgs& a, cudaStream_t stream) {
  if (a.tokens == 0) return;
  const int64_t pairs = (a.q_heads + a.kv_heads) * a.head_dim / 2;
  const int threads = static_cast<int>(std::min<int64_t>(512, ceil_div(pairs, WARP_SIZE) * WARP_SIZE));
  const size_t smem = static_cast<size_t>(a.head_dim) * sizeof(float);
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_kernel(rope_kernel<T>, static_cast<unsigned>(a.tokens), threads, smem, stream, a);
  });
  check_launch("rotary_embedding");
}

}  // namespace lite_srt
