// RoPE in place on q and k: one block per token; a thread rotates one pair across all q and k heads, or, for
// neox-style rotation with 16-byte aligned rows, 8 pairs at once (16-byte loads and stores of both halves).
// The cos/sin row is shared by every head of the token, so it is read once into shared memory.
// The fused variant (kStore) also writes the rotated k and the token's v into its KV-pool slot, which saves the
// separate store kernel per layer at decode (the attention layer runs RoPE and the store back to back).
#include <algorithm>

#include "../cuda_utils.cuh"
#include "../launch.cuh"
#include "ops.h"

namespace lite_srt {
namespace {

// Copies the token's v heads into its pool slot, 16 bytes per thread when the layout allows it.
template <typename T>
__device__ __forceinline__ void store_v_row(const StoreKVArgs& st, int64_t t, int64_t slot, bool vec) {
  constexpr int kVec = 16 / sizeof(T);
  const T* src = static_cast<const T*>(st.v) + t * st.v_stride.row;
  T* dst = static_cast<T*>(st.v_cache) + slot * st.v_cache_stride.row;
  if (vec) {
    const int64_t per_head = st.head_dim / kVec;
    for (int64_t c = threadIdx.x; c < st.kv_heads * per_head; c += blockDim.x) {
      const int64_t h = c / per_head, d = (c % per_head) * kVec;
      store_pack(dst + h * st.v_cache_stride.head + d, load_pack(src + h * st.v_stride.head + d));
    }
  } else {
    for (int64_t c = threadIdx.x; c < st.kv_heads * st.head_dim; c += blockDim.x) {
      const int64_t h = c / st.head_dim, d = c % st.head_dim;
      dst[h * st.v_cache_stride.head + d] = src[h * st.v_stride.head + d];
    }
  }
}

// The 8 neox pairs (i + e, i + e + half), e < 8, of row x; with dst, the rotated halves are stored there too.
template <typename T>
__device__ __forceinline__ void rotate8_neox(T* x, T* dst, int64_t i, int64_t half, const float* cos_sin) {
  const Pack16<T> lo = load_pack(x + i), hi = load_pack(x + i + half);
  Pack16<T> out_lo, out_hi;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float x1 = to_float(lo[e]), x2 = to_float(hi[e]);
    const float c = cos_sin[i + e], s = cos_sin[half + i + e];
    out_lo[e] = from_float<T>(x1 * c - x2 * s);
    out_hi[e] = from_float<T>(x2 * c + x1 * s);
  }
  store_pack(x + i, out_lo);
  store_pack(x + i + half, out_hi);
  if (dst != nullptr) {
    store_pack(dst + i, out_lo);
    store_pack(dst + i + half, out_hi);
  }
}

template <typename T, bool kStore, bool kVec8>
__global__ void rope_kernel(RopeArgs a, StoreKVArgs st, bool v_vec) {
  extern __shared__ float cos_sin[];  // [head_dim] = cos(half) | sin(half)
  pdl_wait();  // launch.cuh: nothing of the previous kernel's is touched before this
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int64_t pos = a.positions[t];
  const int64_t half = a.head_dim / 2;
  for (int64_t i = threadIdx.x; i < a.head_dim; i += blockDim.x) cos_sin[i] = a.cos_sin[pos * a.head_dim + i];
  __syncthreads();
  const int64_t slot = kStore ? st.slots[t] : -1;  // -1: nothing stored (padded entry, or plain RoPE)
  if constexpr (kVec8) {
    const int64_t chunks = half / 8;  // per head
    for (int64_t u = threadIdx.x; u < (a.q_heads + a.kv_heads) * chunks; u += blockDim.x) {
      const int64_t head = u / chunks;
      const int64_t i = (u % chunks) * 8;
      const bool is_q = head < a.q_heads;
      T* x = is_q ? static_cast<T*>(a.q) + t * a.q_stride.row + head * a.q_stride.head
                  : static_cast<T*>(a.k) + t * a.k_stride.row + (head - a.q_heads) * a.k_stride.head;
      T* dst = !is_q && slot >= 0 ? static_cast<T*>(st.k_cache) + slot * st.k_cache_stride.row +
                                        (head - a.q_heads) * st.k_cache_stride.head
                                  : nullptr;
      rotate8_neox<T>(x, dst, i, half, cos_sin);
    }
    if (slot >= 0) store_v_row<T>(st, t, slot, v_vec);
    return;
  }
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
    const T y1 = from_float<T>(x1 * c - x2 * s);
    const T y2 = from_float<T>(x2 * c + x1 * s);
    *p1 = y1;
    *p2 = y2;
    if (head >= a.q_heads && slot >= 0) {
      T* dst = static_cast<T*>(st.k_cache) + slot * st.k_cache_stride.row + (head - a.q_heads) * st.k_cache_stride.head;
      dst[a.is_neox ? i : 2 * i] = y1;
      dst[a.is_neox ? i + half : 2 * i + 1] = y2;
    }
  }
  if (slot >= 0) store_v_row<T>(st, t, slot, v_vec);
}

template <typename T>
bool v_rows_aligned(const StoreKVArgs& st) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t strides[] = {st.v_stride.row, st.v_stride.head, st.v_cache_stride.row, st.v_cache_stride.head,
                             st.head_dim};
  for (int64_t s : strides) {
    if (s % kVec != 0) return false;
  }
  return aligned16(st.v) && aligned16(st.v_cache);
}

// 8 neox pairs per thread needs the halves in 16-byte packs: head_dim a multiple of 16, every q/k (and k pool)
// row and head start 16-byte aligned.
template <typename T, bool kStore>
bool vec8_ok(const RopeArgs& a, const StoreKVArgs& st) {
  constexpr int kVec = 16 / sizeof(T);
  if (!a.is_neox || a.head_dim % (2 * kVec) != 0 || !aligned16(a.q) || !aligned16(a.k)) return false;
  const int64_t strides[] = {a.q_stride.row, a.q_stride.head, a.k_stride.row, a.k_stride.head};
  for (int64_t s : strides) {
    if (s % kVec != 0) return false;
  }
  if constexpr (kStore) {
    if (!aligned16(st.k_cache) || st.k_cache_stride.row % kVec != 0 || st.k_cache_stride.head % kVec != 0) {
      return false;
    }
  }
  return true;
}

template <bool kStore>
void launch_rope(const RopeArgs& a, const StoreKVArgs& st, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(a.head_dim) * sizeof(float);
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool v_vec = kStore && v_rows_aligned<T>(st);
    const auto threads_for = [&](int64_t work) {
      return static_cast<int>(std::min<int64_t>(512, ceil_div(work, WARP_SIZE) * WARP_SIZE));
    };
    if constexpr (sizeof(T) == 2) {
      if (vec8_ok<T, kStore>(a, st)) {
        launch_kernel(rope_kernel<T, kStore, true>, static_cast<unsigned>(a.tokens),
                      threads_for((a.q_heads + a.kv_heads) * a.head_dim / 16), smem, stream, a, st, v_vec);
        return;
      }
    }
    launch_kernel(rope_kernel<T, kStore, false>, static_cast<unsigned>(a.tokens),
                  threads_for((a.q_heads + a.kv_heads) * a.head_dim / 2), smem, stream, a, st, v_vec);
  });
}

}  // namespace

void launch_rotary_embedding(const RopeArgs& a, cudaStream_t stream) {
  if (a.tokens == 0) return;
  launch_rope<false>(a, StoreKVArgs{}, stream);
  check_launch("rotary_embedding");
}

void launch_rope_store_kv(const RopeArgs& a, const StoreKVArgs& st, cudaStream_t stream) {
  if (a.tokens == 0) return;
  launch_rope<true>(a, st, stream);
  check_launch("rope_store_kv");
}

}  // namespace lite_srt
