// KV store: copy each token's K and V heads into its pool slot, skipping slot < 0 (padded batch entries).
// One block per token; each thread moves 16-byte chunks when rows are 16-byte aligned.
#include <algorithm>

#include "../cuda_utils.cuh"
#include "../launch.cuh"
#include "store_kv.h"

namespace lite_srt {
namespace {

template <typename T, int VEC>
__global__ void store_kv_kernel(StoreKVArgs a) {
  pdl_wait();  // launch.cuh: nothing of the previous kernel's is touched before this
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int64_t slot = a.slots[t];
  if (slot < 0) return;
  const int64_t chunks_per_head = a.head_dim / VEC;
  const int64_t chunks = a.kv_heads * chunks_per_head;
  for (int64_t c = threadIdx.x; c < 2 * chunks; c += blockDim.x) {
    const bool is_v = c >= chunks;
    const int64_t cc = is_v ? c - chunks : c;
    const int64_t h = cc / chunks_per_head;
    const int64_t d = (cc % chunks_per_head) * VEC;
    const T* src = is_v ? static_cast<const T*>(a.v) + t * a.v_stride.row + h * a.v_stride.head
                        : static_cast<const T*>(a.k) + t * a.k_stride.row + h * a.k_stride.head;
    T* dst = is_v ? static_cast<T*>(a.v_cache) + slot * a.v_cache_stride.row + h * a.v_cache_stride.head
                  : static_cast<T*>(a.k_cache) + slot * a.k_cache_stride.row + h * a.k_cache_stride.head;
    if constexpr (VEC > 1) {
      store_pack(dst + d, load_pack(src + d));
    } else {
      dst[d] = src[d];
    }
  }
}

template <typename T>
bool layout_aligned(const StoreKVArgs& a) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t strides[] = {a.k_stride.row,       a.k_stride.head,       a.v_stride.row,
                             a.v_stride.head,      a.k_cache_stride.row,  a.k_cache_stride.head,
                             a.v_cache_stride.row, a.v_cache_stride.head, a.head_dim};
  for (int64_t s : strides) {
    if (s % kVec != 0) return false;
  }
  return aligned16(a.k) && aligned16(a.v) && aligned16(a.k_cache) && aligned16(a.v_cache);
}

}  // namespace

void launch_store_kv(const StoreKVArgs& a, cudaStream_t stream) {
  if (a.tokens == 0) return;
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    const bool vec = layout_aligned<T>(a);
    const int64_t work = 2 * a.kv_heads * a.head_dim / (vec ? kVec : 1);
    const int threads = static_cast<int>(std::min<int64_t>(256, ceil_div(work, WARP_SIZE) * WARP_SIZE));
    if (vec) {
      launch_kernel(store_kv_kernel<T, kVec>, static_cast<unsigned>(a.tokens), threads, 0, stream, a);
    } else {
      launch_kernel(store_kv_kernel<T, 1>, static_cast<unsigned>(a.tokens), threads, 0, stream, a);
    }
  });
  check_launch("store_kv");
}

}  // namespace lite_srt
