// Paged extend (prefill) attention: the new tokens of each request attend causally to themselves and to the
// request's cached prefix, all read from the pool through req_to_token. Ragged batches run in one launch.
//
// Tensor-core path (fp16/bf16, sm_80+): a block owns 64 query rows of one request and one query head (4 warps x
// 16 rows). It gathers 64-key tiles of K and V into shared memory, computes S = Q K^T with mma.sync m16n8k16,
// keeps the online softmax in the mma accumulator layout (each row lives in one quad of lanes), and feeds P back
// into mma as the A operand for P V without a trip through shared memory (the FlashAttention-2 register reuse).
// Tiles of the grid map to (request, query tile) by a scan over extend_lens, so no host sync is needed.
// SIMT path: float32 and ROCm (no mma.sync there), one warp per (token, head); correct but slow.
#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "../cuda_utils.cuh"
#include "attention.h"

namespace lite_srt {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// Finds the request owning query tile `tile` (tiles of `tile_rows` tokens, request by request).
__device__ __forceinline__ bool find_tile(const AttentionArgs& a, int64_t tile, int64_t tile_rows, int64_t& req,
                                          int64_t& tile_in_req) {
  int64_t seen = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t n = (a.extend_lens[b] + tile_rows - 1) / tile_rows;
    if (tile < seen + n) {
      req = b;
      tile_in_req = tile - seen;
      return true;
    }
    seen += n;
  }
  return false;
}

#if !defined(USE_ROCM)
constexpr int kBlockQ = 64;
constexpr int kBlockK = 64;
constexpr int kMmaThreads = 128;

template <typename T>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (sizeof(T) == 2 && std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T l = from_float<T>(lo), h = from_float<T>(hi);
  return static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(l)) |
         (static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(h)) << 16);
}

__device__ __forceinline__ uint32_t pack2_raw(const void* lo, const void* hi) {
  return static_cast<uint32_t>(*static_cast<const uint16_t*>(lo)) |
         (static_cast<uint32_t>(*static_cast<const uint16_t*>(hi)) << 16);
}

template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads) extend_mma_kernel(AttentionArgs a) {
  constexpr int kStride = D + 8;  // padded smem rows spread the fragment loads over banks
  constexpr int kChunks = D / 8;  // 16-byte chunks per K/V row
  __shared__ __align__(16) T ks[kBlockK * kStride];
  __shared__ __align__(16) T vs[kBlockK * kStride];
  __shared__ int64_t tile_info[2];

  if (threadIdx.x == 0) {
    int64_t req = -1, tile_in_req = 0;
    if (!find_tile(a, blockIdx.x, kBlockQ, req, tile_in_req)) req = -1;
    tile_info[0] = req;
    tile_info[1] = tile_in_req;
  }
  __syncthreads();
  const int64_t b = tile_info[0];
  if (b < 0) return;
  const int64_t head = blockIdx.y;
  const int64_t kvh = head / (a.q_heads / a.kv_heads);
  const int64_t n_ext = a.extend_lens[b];
  const int64_t seq_len = a.seq_lens[b];
  const int64_t prefix = seq_len - n_ext;
  const int64_t t0 = tile_info[1] * kBlockQ;  // first query token of the tile (index within the extend)
  const int64_t row0 = a.extend_start_loc[b] + t0;
  const int64_t kv_end = min(seq_len, prefix + t0 + kBlockQ);
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;

  const int warp = threadIdx.x / WARP_SIZE;  // mma.sync fragments assume 32-lane warps (NVIDIA only)
  const int lane = threadIdx.x % WARP_SIZE;
  const int g = lane >> 2;   // fragment row within the 8-row half
  const int tig = lane & 3;  // thread in quad: fragment column pair
  const int64_t tr0 = t0 + warp * 16 + g;  // this thread's two query tokens
  const int64_t tr1 = tr0 + 8;

  // Q as A fragments, straight from global memory (read once per block).
  uint32_t qa[D / 16][4];
  {
    const T* q0 = static_cast<const T*>(a.q) + (row0 + warp * 16 + g) * a.q_stride.row + head * a.q_stride.head;
    const T* q1 = q0 + 8 * a.q_stride.row;
    const bool v0 = tr0 < n_ext, v1 = tr1 < n_ext;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int c = kk * 16 + tig * 2;
      qa[kk][0] = v0 ? *reinterpret_cast<const uint32_t*>(q0 + c) : 0u;
      qa[kk][1] = v1 ? *reinterpret_cast<const uint32_t*>(q1 + c) : 0u;
      qa[kk][2] = v0 ? *reinterpret_cast<const uint32_t*>(q0 + c + 8) : 0u;
      qa[kk][3] = v1 ? *reinterpret_cast<const uint32_t*>(q1 + c + 8) : 0u;
    }
  }

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = -FLT_MAX, m1 = -FLT_MAX, l0 = 0.0f, l1 = 0.0f;
  const float qk_scale = a.scale * kLog2e;

  for (int64_t kt = 0; kt < kv_end; kt += kBlockK) {
    __syncthreads();  // the previous tile's K/V are no longer read
    for (int c = threadIdx.x; c < kBlockK * kChunks; c += kMmaThreads) {
      const int r = c / kChunks;
      const int col = (c % kChunks) * 8;
      const int64_t j = kt + r;
      uint4 kv_k = make_uint4(0, 0, 0, 0), kv_v = make_uint4(0, 0, 0, 0);
      if (j < kv_end) {
        const int64_t slot = a.req_to_token[table_row + j];
        kv_k = *reinterpret_cast<const uint4*>(static_cast<const T*>(a.k_cache) + slot * a.k_stride.row +
                                               kvh * a.k_stride.head + col);
        kv_v = *reinterpret_cast<const uint4*>(static_cast<const T*>(a.v_cache) + slot * a.v_stride.row +
                                               kvh * a.v_stride.head + col);
      }
      *reinterpret_cast<uint4*>(&ks[r * kStride + col]) = kv_k;
      *reinterpret_cast<uint4*>(&vs[r * kStride + col]) = kv_v;
    }
    __syncthreads();

    float s[kBlockK / 8][4];
#pragma unroll
    for (int n = 0; n < kBlockK / 8; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const T* kr = &ks[(n * 8 + g) * kStride + kk * 16 + tig * 2];
        mma_16816<T>(s[n], qa[kk], *reinterpret_cast<const uint32_t*>(kr), *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }

    // Scale, causal/length mask, and the online softmax; a row's 64 scores are spread over one quad.
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int n = 0; n < kBlockK / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = kt + n * 8 + tig * 2 + (e & 1);
        const int64_t limit = prefix + (e < 2 ? tr0 : tr1);
        const bool visible = j <= limit && j < kv_end;
        s[n][e] = visible ? s[n][e] * qk_scale : -FLT_MAX;
      }
      mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
      mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float alpha0 = exp2f(m0 - mx0), alpha1 = exp2f(m1 - mx1);
    m0 = mx0;
    m1 = mx1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int n = 0; n < kBlockK / 8; ++n) {
      s[n][0] = s[n][0] == -FLT_MAX ? 0.0f : exp2f(s[n][0] - m0);
      s[n][1] = s[n][1] == -FLT_MAX ? 0.0f : exp2f(s[n][1] - m0);
      s[n][2] = s[n][2] == -FLT_MAX ? 0.0f : exp2f(s[n][2] - m1);
      s[n][3] = s[n][3] == -FLT_MAX ? 0.0f : exp2f(s[n][3] - m1);
      sum0 += s[n][0] + s[n][1];
      sum1 += s[n][2] + s[n][3];
    }
    l0 = l0 * alpha0 + sum0;  // per-lane partial sums; the quad is reduced once at the end
    l1 = l1 * alpha1 + sum1;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= alpha0;
      o[n][1] *= alpha0;
      o[n][2] *= alpha1;
      o[n][3] *= alpha1;
    }

    // O += P V: the S accumulators of key tiles 2kk and 2kk+1 are exactly the A fragment of a 16-key step.
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const T* v0 = &vs[(kk * 16 + tig * 2) * kStride + g];
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const T* vp = v0 + n * 8;
        const uint32_t b0 = pack2_raw(vp, vp + kStride);
        const uint32_t b1 = pack2_raw(vp + 8 * kStride, vp + 9 * kStride);
        mma_16816<T>(o[n], pa, b0, b1);
      }
    }
  }

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  T* out0 = static_cast<T*>(a.out) + (row0 + warp * 16 + g) * a.out_stride.row + head * a.out_stride.head;
  T* out1 = out0 + 8 * a.out_stride.row;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + tig * 2;
    if (tr0 < n_ext) *reinterpret_cast<uint32_t*>(out0 + c) = pack2<T>(o[n][0] * inv0, o[n][1] * inv0);
    if (tr1 < n_ext) *reinterpret_cast<uint32_t*>(out1 + c) = pack2<T>(o[n][2] * inv1, o[n][3] * inv1);
  }
}
#endif  // !USE_ROCM

// One warp per (query token, head): lanes split the head dim, keys are walked one at a time.
template <typename T, int D>
__global__ void extend_simt_kernel(AttentionArgs a) {
  constexpr int PER_LANE = (D + WARP_SIZE - 1) / WARP_SIZE;
  const int64_t t = blockIdx.x;
  const int64_t head = blockIdx.y;
  int64_t b = -1;
  for (int64_t r = 0; r < a.batch; ++r) {
    const int64_t start = a.extend_start_loc[r];
    if (t >= start && t < start + a.extend_lens[r]) {
      b = r;
      break;
    }
  }
  if (b < 0) return;
  const int64_t seq_len = a.seq_lens[b];
  const int64_t pos = seq_len - a.extend_lens[b] + (t - a.extend_start_loc[b]);
  const int64_t kvh = head / (a.q_heads / a.kv_heads);
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;
  const T* q = static_cast<const T*>(a.q) + t * a.q_stride.row + head * a.q_stride.head;
  float qv[PER_LANE], acc[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int d = threadIdx.x + i * WARP_SIZE;
    qv[i] = d < D ? to_float(q[d]) * a.scale * kLog2e : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -FLT_MAX, l = 0.0f;
  for (int64_t j = 0; j <= pos; ++j) {
    const int64_t slot = a.req_to_token[table_row + j];
    const T* k = static_cast<const T*>(a.k_cache) + slot * a.k_stride.row + kvh * a.k_stride.head;
    const T* v = static_cast<const T*>(a.v_cache) + slot * a.v_stride.row + kvh * a.v_stride.head;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int d = threadIdx.x + i * WARP_SIZE;
      if (d < D) dot += qv[i] * to_float(k[d]);
    }
    dot = warp_reduce_sum(dot);
    const float m_new = fmaxf(m, dot);
    const float alpha = exp2f(m - m_new), p = exp2f(dot - m_new);
    l = l * alpha + p;
    m = m_new;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int d = threadIdx.x + i * WARP_SIZE;
      if (d < D) acc[i] = acc[i] * alpha + p * to_float(v[d]);
    }
  }
  T* out = static_cast<T*>(a.out) + t * a.out_stride.row + head * a.out_stride.head;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int d = threadIdx.x + i * WARP_SIZE;
    if (d < D) out[d] = from_float<T>(l > 0.0f ? acc[i] / l : 0.0f);
  }
}

template <typename T, int D>
void launch_typed(const AttentionArgs& a, cudaStream_t stream) {
#if !defined(USE_ROCM)
  if constexpr (sizeof(T) == 2) {
    // Every request contributes at most one partial tile, so this bounds the tiles without reading lengths.
    const dim3 grid(static_cast<unsigned>(ceil_div(a.tokens, kBlockQ) + a.batch), static_cast<unsigned>(a.q_heads));
    extend_mma_kernel<T, D><<<grid, kMmaThreads, 0, stream>>>(a);
    return;
  }
#endif
  const dim3 grid(static_cast<unsigned>(a.tokens), static_cast<unsigned>(a.q_heads));
  extend_simt_kernel<T, D><<<grid, WARP_SIZE, 0, stream>>>(a);
}

}  // namespace

void launch_extend_attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.tokens == 0 || a.batch == 0) return;
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (a.head_dim == 64) {
      launch_typed<T, 64>(a, stream);
    } else {
      launch_typed<T, 128>(a, stream);
    }
  });
  check_launch("extend_attention");
}

}  // namespace lite_srt
