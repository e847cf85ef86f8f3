// Paged extend (prefill) attention: the new tokens of each request attend causally to themselves and to the
// request's cached prefix, all read from the pool through req_to_token. Ragged batches run in one launch.
//
// Tensor-core path (fp16/bf16, NVIDIA sm_80+), FlashAttention-2 style: a block owns 128 query rows of one
// request and one query head (8 warps x 16 rows, Q fragments in registers). 64-key tiles of K and V are gathered
// through req_to_token with cp.async into a 3-stage shared-memory ring (slot indices prefetched two tiles ahead),
// so loads of later tiles overlap the math of this one. S = Q K^T and O += P V run on mma.sync m16n8k16 with
// ldmatrix (.trans for V) fragment loads; the online softmax stays in the accumulator layout and P is fed back
// as the A operand without a trip through shared memory. Only diagonal/last tiles are masked, and warps whose
// rows see none of a tile skip it. Grid = (query head, query tile): the heads of a GQA group run side by side
// and share K/V through L2; tiles run last-first (the longest causal rows start first) and map to
// (request, tile) by a scan over extend_lens, so no host sync is needed.
// sm_90a path (extend_wgmma_kernel, chosen at run time where the binary has sm_90a code and the device is a
// Hopper): the same tiles and gather, with both matrix products on warpgroup mma (wgmma) reading K and V from
// 128-byte-swizzled shared memory; see the comment above the kernel. extend_wgmma_ws_kernel (the default at
// d=128) runs the same math warp-specialized: a producer warpgroup gathers, two consumer warpgroups ping-pong.
// SIMT path: float32 and ROCm (no mma.sync there), one warp per (token, head); correct but slow.
#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../cuda_utils.cuh"
#include "attention.h"
#include "attn_mma.cuh"
#include "attn_wgmma.cuh"

namespace lite_srt {
namespace {

constexpr float kLog2e = 1.4426950408889634f;  // used by the SIMT path

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
constexpr int kBlockQ = 128;  // query rows per block: 8 warps x 16 rows
constexpr int kBlockK = 64;   // keys per pipeline stage
constexpr int kStages = 3;
constexpr int kMmaThreads = 256;

// The query tile a block owns: request b's extend rows [t0, t0 + kBlockQ), written from output row row0 on, and
// the keys [0, kv_end) those rows see (the first `prefix` were cached before the extend). The block's query head
// is blockIdx.x (heads of one KV group run side by side and share K/V through L2), kvh its KV head.
struct QueryTile {
  int64_t b, head, kvh, n_ext, prefix, t0, row0, kv_end;
};

__device__ __forceinline__ QueryTile query_tile(const AttentionArgs& a, const int64_t (&info)[2]) {
  QueryTile q;
  q.b = info[0];
  q.head = blockIdx.x;
  q.kvh = q.head / (a.q_heads / a.kv_heads);
  q.n_ext = a.extend_lens[q.b];
  const int64_t seq_len = a.seq_lens[q.b];
  q.prefix = seq_len - q.n_ext;
  q.t0 = info[1] * kBlockQ;  // first query token of the tile (index within the extend)
  q.row0 = a.extend_start_loc[q.b] + q.t0;
  q.kv_end = min(seq_len, q.prefix + q.t0 + kBlockQ);
  return q;
}

// Causal and end-of-keys mask of one warp's rows tr0 and tr1 = tr0 + 8 of S for the tile of kKeys keys starting at
// key kt (a tile that every row sees wholly is left as it is).
template <int kKeys>
__device__ __forceinline__ void mask_tile(float (&s)[kKeys / 8][4], int64_t kt, int64_t first_limit, int64_t kv_end,
                                          int64_t prefix, int64_t tr0, int64_t tr1, int tig) {
  if (kt + kKeys - 1 <= first_limit && kt + kKeys <= kv_end) return;
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t j = kt + n * 8 + tig * 2 + (e & 1);
      const int64_t limit = prefix + (e < 2 ? tr0 : tr1);
      if (j > limit || j >= kv_end) s[n][e] = -INFINITY;
    }
  }
}

template <typename T, int D>
constexpr size_t extend_smem_bytes() {
  return 2 * kStages * attn::KVTile<T, D, kBlockK>::kElems * sizeof(T) + kStages * kBlockK * sizeof(int);
}

template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads, 1) extend_mma_kernel(AttentionArgs a, int tiles_bound) {
  using Tile = attn::KVTile<T, D, kBlockK>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + kStages * Tile::kElems;
  int* sm_slot = reinterpret_cast<int*>(vs + kStages * Tile::kElems);
  __shared__ int64_t tile_info[2];

  // Longest (last) query tiles first: causal work grows with the tile index, so the tail of the grid is short.
  if (threadIdx.x == 0) {
    int64_t req = -1, tile_in_req = 0;
    if (!find_tile(a, tiles_bound - 1 - static_cast<int64_t>(blockIdx.y), kBlockQ, req, tile_in_req)) req = -1;
    tile_info[0] = req;
    tile_info[1] = tile_in_req;
  }
  __syncthreads();
  if (tile_info[0] < 0) return;
  const auto [b, head, kvh, n_ext, prefix, t0, row0, kv_end] = query_tile(a, tile_info);
  const int n_tiles = static_cast<int>(ceil_div(kv_end, kBlockK));
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;

  const int warp = threadIdx.x / WARP_SIZE;  // mma.sync fragments assume 32-lane warps (NVIDIA only)
  const int lane = threadIdx.x % WARP_SIZE;
  const int g = lane >> 2;
  const int tig = lane & 3;
  const int64_t tw = t0 + warp * 16;  // this warp's first query token
  const int64_t tr0 = tw + g, tr1 = tr0 + 8;
  // Keys <= first_limit are visible to every row of the warp; keys > last_limit to none.
  const int64_t first_limit = prefix + tw, last_limit = min(prefix + tw + 15, kv_end - 1);
  const bool warp_active = tw < n_ext;

  uint32_t qa[D / 16][4];
  {
    const T* q0 = static_cast<const T*>(a.q) + (row0 + warp * 16 + g) * a.q_stride.row + head * a.q_stride.head;
    attn::load_q_frags<T, D>(qa, q0, q0 + 8 * a.q_stride.row, tr0 < n_ext, tr1 < n_ext, tig);
  }
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  attn::RowState st;
  const float qk_scale = a.scale * attn::kLog2e;
  const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head;
  const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head;

  // Slot indices run two tiles ahead of the K/V copies (ring of kStages tiles in shared memory + 2 registers).
  const int tid = threadIdx.x;
  int next0 = -1, next1 = -1;
  if (tid < kBlockK) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) sm_slot[s * kBlockK + tid] = attn::slot_at(a, table_row, s * kBlockK + tid, kv_end);
    next0 = attn::slot_at(a, table_row, kStages * kBlockK + tid, kv_end);
    next1 = attn::slot_at(a, table_row, (kStages + 1) * kBlockK + tid, kv_end);
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) {
      attn::issue_kv_tile<T, D, kBlockK, kMmaThreads>(ks + s * Tile::kElems, vs + s * Tile::kElems,
                                                      sm_slot + s * kBlockK, k_base, a.k_stride.row, v_base,
                                                      a.v_stride.row);
    }
    attn::cp_async_commit();
  }

  for (int it = 0; it < n_tiles; ++it) {
    attn::cp_async_wait<kStages - 2>();
    __syncthreads();  // tile `it` is visible to all; every warp is done with the stage refilled below
    const int pre = it + kStages - 1;
    if (pre < n_tiles) {
      const int st_i = pre % kStages;
      attn::issue_kv_tile<T, D, kBlockK, kMmaThreads>(ks + st_i * Tile::kElems, vs + st_i * Tile::kElems,
                                                      sm_slot + st_i * kBlockK, k_base, a.k_stride.row, v_base,
                                                      a.v_stride.row);
    }
    attn::cp_async_commit();
    if (tid < kBlockK) {
      sm_slot[(it % kStages) * kBlockK + tid] = next0;
      next0 = next1;
      next1 = attn::slot_at(a, table_row, (it + kStages + 2) * static_cast<int64_t>(kBlockK) + tid, kv_end);
    }

    const int64_t kt = static_cast<int64_t>(it) * kBlockK;
    if (!warp_active || kt > last_limit) continue;  // no key of this tile is visible to this warp's rows
    const int stage = it % kStages;
    float s[kBlockK / 8][4];
#pragma unroll
    for (int n = 0; n < kBlockK / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    attn::qk_tile<T, D, kBlockK / 8>(s, qa, ks + stage * Tile::kElems, lane);
    mask_tile<kBlockK>(s, kt, first_limit, kv_end, prefix, tr0, tr1, tig);  // the diagonal or the end
    attn::softmax_step<kBlockK / 8, D / 8>(s, o, st, qk_scale);
    attn::pv_tile<T, D, kBlockK / 8>(o, s, vs + stage * Tile::kElems, lane);
  }
  attn::cp_async_wait<0>();

  const float l0 = attn::quad_sum(st.l0), l1 = attn::quad_sum(st.l1);
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  T* out0 = static_cast<T*>(a.out) + (row0 + warp * 16 + g) * a.out_stride.row + head * a.out_stride.head;
  T* out1 = out0 + 8 * a.out_stride.row;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + tig * 2;
    if (tr0 < n_ext) *reinterpret_cast<uint32_t*>(out0 + c) = attn::pack2<T>(o[n][0] * inv0, o[n][1] * inv0);
    if (tr1 < n_ext) *reinterpret_cast<uint32_t*>(out1 + c) = attn::pack2<T>(o[n][2] * inv1, o[n][3] * inv1);
  }
}

// Two 16-row m-tiles per warp (32 query rows), the FlashAttention-2 layout: every K/V fragment loaded from shared
// memory feeds two mma instead of one, halving ldmatrix traffic, the limit of the 16-row kernel above. Q lives in
// shared memory (reloaded per key tile) to leave registers for the 2 x D/8 accumulators; 4 warps cover 128 rows
// and two blocks share an SM (2-stage K/V ring).
constexpr int kW2Threads = 128;
constexpr int kW2Stages = 2;

template <typename T, int D>
constexpr size_t extend_w2_smem_bytes() {
  return (2 * kW2Stages + 2) * attn::KVTile<T, D, kBlockK>::kElems * sizeof(T) + kW2Stages * kBlockK * sizeof(int);
}

template <typename T, int D>
__global__ void __launch_bounds__(kW2Threads, 2) extend_mma2_kernel(AttentionArgs a, int tiles_bound) {
  using Tile = attn::KVTile<T, D, kBlockK>;
  constexpr int kStride = Tile::kStride;
  constexpr int NT = kBlockK / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);  // [kBlockQ][kStride]
  T* ks = qs + 2 * Tile::kElems;
  T* vs = ks + kW2Stages * Tile::kElems;
  int* sm_slot = reinterpret_cast<int*>(vs + kW2Stages * Tile::kElems);
  __shared__ int64_t tile_info[2];

  if (threadIdx.x == 0) {
    int64_t req = -1, tile_in_req = 0;
    if (!find_tile(a, tiles_bound - 1 - static_cast<int64_t>(blockIdx.y), kBlockQ, req, tile_in_req)) req = -1;
    tile_info[0] = req;
    tile_info[1] = tile_in_req;
  }
  __syncthreads();
  if (tile_info[0] < 0) return;
  const auto [b, head, kvh, n_ext, prefix, t0, row0, kv_end] = query_tile(a, tile_info);
  const int n_tiles = static_cast<int>(ceil_div(kv_end, kBlockK));
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;

  const int warp = threadIdx.x / WARP_SIZE;
  const int lane = threadIdx.x % WARP_SIZE;
  const int g = lane >> 2;
  const int tig = lane & 3;
  // Positions of one request fit in 31 bits: int keeps the mask math in single registers.
  const int tw = static_cast<int>(t0) + warp * 32;
  const int prefix32 = static_cast<int>(prefix), kv_end32 = static_cast<int>(kv_end);
  const int first_limit = prefix32 + tw, last_limit = min(prefix32 + tw + 31, kv_end32 - 1);
  const bool warp_active = tw < n_ext;
  const int tid = threadIdx.x;

  // Q tile (rows past the extend zero-filled) and the first K/V tile go out in the first copy group.
  {
    constexpr int kChunks = D / 8;
    const T* qb = static_cast<const T*>(a.q) + row0 * a.q_stride.row + head * a.q_stride.head;
#pragma unroll
    for (int i = 0; i < kBlockQ * kChunks / kW2Threads; ++i) {
      const int c = tid + i * kW2Threads;
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool ok = t0 + r < n_ext;
      attn::cp_async_16(qs + r * kStride + col, ok ? qb + r * a.q_stride.row + col : qb, ok);
    }
  }
  int next0 = -1;
  if (tid < kBlockK) {
#pragma unroll
    for (int s = 0; s < kW2Stages; ++s) sm_slot[s * kBlockK + tid] = attn::slot_at(a, table_row, s * kBlockK + tid, kv_end);
    next0 = attn::slot_at(a, table_row, kW2Stages * kBlockK + tid, kv_end);
  }
  __syncthreads();
  const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head;
  const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head;
  attn::issue_kv_tile<T, D, kBlockK, kW2Threads>(ks, vs, sm_slot, k_base, a.k_stride.row, v_base, a.v_stride.row);
  attn::cp_async_commit();

  float o[2][D / 8][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
  attn::RowState st[2];
  const float qk_scale = a.scale * attn::kLog2e;
  // A-fragment ldmatrix of Q: matrices (rows 0-7, d lo), (rows 8-15, d lo), (rows 0-7, d hi), (rows 8-15, d hi).
  const T* q_frag = qs + (warp * 32 + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride + (lane >> 4) * 8;

  for (int it = 0; it < n_tiles; ++it) {
    attn::cp_async_wait<0>();
    __syncthreads();  // tile `it` is visible; every warp is done with the other stage
    if (it + 1 < n_tiles) {
      const int st_i = (it + 1) % kW2Stages;
      attn::issue_kv_tile<T, D, kBlockK, kW2Threads>(ks + st_i * Tile::kElems, vs + st_i * Tile::kElems,
                                                     sm_slot + st_i * kBlockK, k_base, a.k_stride.row, v_base,
                                                     a.v_stride.row);
    }
    attn::cp_async_commit();
    if (tid < kBlockK) {  // ring entry of tile `it` now takes tile it + 2
      sm_slot[(it % kW2Stages) * kBlockK + tid] = next0;
      next0 = attn::slot_at(a, table_row, (it + kW2Stages + 1) * static_cast<int64_t>(kBlockK) + tid, kv_end);
    }

    const int kt = it * kBlockK;
    if (!warp_active || kt > last_limit) continue;
    const T* kst = ks + (it % kW2Stages) * Tile::kElems;
    const T* vst = vs + (it % kW2Stages) * Tile::kElems;
    float s[2][NT][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < NT; ++n) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.0f;
    {
      const T* kb = kst + ((lane & 7) + (lane >> 4) * 8) * kStride + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qa0[4], qa1[4];
        attn::ldmatrix_x4(qa0, q_frag + kk * 16);
        attn::ldmatrix_x4(qa1, q_frag + 16 * kStride + kk * 16);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          uint32_t bk[4];
          attn::ldmatrix_x4(bk, kb + np * 16 * kStride + kk * 16);
          attn::mma_16816<T>(s[0][2 * np], qa0, bk[0], bk[1]);
          attn::mma_16816<T>(s[0][2 * np + 1], qa0, bk[2], bk[3]);
          attn::mma_16816<T>(s[1][2 * np], qa1, bk[0], bk[1]);
          attn::mma_16816<T>(s[1][2 * np + 1], qa1, bk[2], bk[3]);
        }
      }
    }
    if (kt + kBlockK - 1 > first_limit || kt + kBlockK > kv_end32) {
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = kt + n * 8 + tig * 2 + (e & 1);
            const int limit = first_limit + m * 16 + g + (e < 2 ? 0 : 8);
            if (j > limit || j >= kv_end32) s[m][n][e] = -INFINITY;
          }
    }
    attn::softmax_step<NT, D / 8>(s[0], o[0], st[0], qk_scale);
    attn::softmax_step<NT, D / 8>(s[1], o[1], st[1], qk_scale);
    // P as bf16/fp16 A fragments right away: half the registers of the float scores during P V.
    uint32_t pa[2][NT / 2][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int kk = 0; kk < NT / 2; ++kk) {
        pa[m][kk][0] = attn::pack2<T>(s[m][2 * kk][0], s[m][2 * kk][1]);
        pa[m][kk][1] = attn::pack2<T>(s[m][2 * kk][2], s[m][2 * kk][3]);
        pa[m][kk][2] = attn::pack2<T>(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
        pa[m][kk][3] = attn::pack2<T>(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
      }
    {
      const T* vb = vst + ((lane & 7) + ((lane >> 3) & 1) * 8) * kStride + (lane >> 4) * 8;
#pragma unroll
      for (int kk = 0; kk < NT / 2; ++kk) {
#pragma unroll
        for (int np = 0; np < D / 16; ++np) {
          uint32_t bv[4];
          attn::ldmatrix_x4_trans(bv, vb + kk * 16 * kStride + np * 16);
          attn::mma_16816<T>(o[0][2 * np], pa[0][kk], bv[0], bv[1]);
          attn::mma_16816<T>(o[0][2 * np + 1], pa[0][kk], bv[2], bv[3]);
          attn::mma_16816<T>(o[1][2 * np], pa[1][kk], bv[0], bv[1]);
          attn::mma_16816<T>(o[1][2 * np + 1], pa[1][kk], bv[2], bv[3]);
        }
      }
    }
  }
  attn::cp_async_wait<0>();

#pragma unroll
  for (int m = 0; m < 2; ++m) {
    const float l0 = attn::quad_sum(st[m].l0), l1 = attn::quad_sum(st[m].l1);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const int64_t r0 = tw + m * 16 + g;  // token index within the extend
    T* out0 = static_cast<T*>(a.out) + (a.extend_start_loc[b] + r0) * a.out_stride.row + head * a.out_stride.head;
    T* out1 = out0 + 8 * a.out_stride.row;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int c = n * 8 + tig * 2;
      if (r0 < n_ext) *reinterpret_cast<uint32_t*>(out0 + c) = attn::pack2<T>(o[m][n][0] * inv0, o[m][n][1] * inv0);
      if (r0 + 8 < n_ext) *reinterpret_cast<uint32_t*>(out1 + c) = attn::pack2<T>(o[m][n][2] * inv1, o[m][n][3] * inv1);
    }
  }
}

// Hopper path (sm_90a): the 8 warps form two warpgroups of 64 query rows each, and both matrix products run on
// wgmma: S = Q K^T with Q as register A fragments (as in extend_mma_kernel) and K from shared memory, then
// O += P V with P repacked from the S accumulators into A fragments and V from shared memory. One wgmma reads a
// whole 64 x 16 step of K or V from shared memory for 64 rows, instead of every warp re-reading it for 16 rows
// through ldmatrix, and it runs at Hopper's tensor-core rate, which mma.sync does not reach. K/V tiles are still
// gathered by slot with cp.async (the paged layout rules out one tensor map per tile), stored in the 128-byte
// swizzled layout the wgmma descriptors read. Only launched where the binary holds sm_90a code for a compute
// capability 9.0 device.
//
// kOverlap = false: per tile, S wgmma -> wait -> softmax -> P V wgmma -> wait; only the other warpgroup fills
// the tensor cores during a softmax. kOverlap = true (FlashAttention-3's intra-warpgroup overlap): the P V
// product of tile j - 1 is issued right behind S of tile j and runs during tile j's softmax; the output rescale
// waits for it. V of tile j - 1 must then outlive one more copy, hence one more pipeline stage.
template <bool kOverlap, int kKeys>
struct WgPipe {
  // Tiles copied ahead of the one being computed: 3 x 64 keys with the overlap, else 2; at 128 keys a tile is
  // 64 KB at d=128, so the overlap leaves room for one tile in flight only.
  static constexpr int kDist = kKeys == 128 ? (kOverlap ? 1 : 2) : (kOverlap ? 3 : 2);
  static constexpr int kStages = kDist + (kOverlap ? 2 : 1);  // shared-memory K/V stages
  static constexpr int kSlotRing = kDist + 1;                // slot-index ring entries (see extend_mma_kernel)
  // 128-key tiles double S and P in registers; Q then moves to shared memory (wgmma reads A from there too)
  // so the overlapped kernel stays under 255 registers.
  static constexpr bool kQSmem = kKeys == 128;
};

template <typename T, int D, bool kOverlap, int kKeys>
constexpr size_t extend_wg_smem_bytes() {
  using P = WgPipe<kOverlap, kKeys>;
  return 1024 + (P::kQSmem ? kBlockQ * D * sizeof(T) : 0) + 2 * P::kStages * kKeys * D * sizeof(T) +
         P::kSlotRing * kKeys * sizeof(int);
}

// Gathers kKeys K and V rows into swizzled tiles ([D / 64][kKeys][64] each); slots < 0 are zero-filled.
template <typename T, int D, int kKeys>
__device__ __forceinline__ void issue_kv_tile_sw128(T* ks, T* vs, const int* slots, const T* k_base, int64_t k_row,
                                                    const T* v_base, int64_t v_row) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kTotal = kKeys * kChunks;
  static_assert(kTotal % kMmaThreads == 0, "chunks must divide evenly over the block");
#pragma unroll
  for (int i = 0; i < kTotal / kMmaThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kMmaThreads;
    const int r = c / kChunks;
    const int col = (c % kChunks) * 8;
    const int slot = slots[r];
    const int64_t s = slot < 0 ? 0 : slot;
    const int off = attn::sw128_offset<kKeys>(r, col);
    attn::cp_async_16(ks + off, k_base + s * k_row + col, slot >= 0);
    attn::cp_async_16(vs + off, v_base + s * v_row + col, slot >= 0);
  }
}

#if defined(LITE_SRT_SM90A)
// The same with Q in shared memory (this warpgroup's 64 rows, swizzled [D / 64][64][64]) as the A operand.
// kWide (128-key tiles): one m64n128k16 per step over all the tile's keys, which are 128 consecutive 128-byte rows
// of each column block, so Q is read from shared memory once per step instead of twice.
template <typename T, int D, int kKeys, bool kWide = false>
__device__ __forceinline__ void issue_qk_ss(float (&s)[kKeys / 8][4], uint32_t q_addr, uint32_t k_addr) {
  static_assert(!kWide || kKeys == 128, "the wide form covers a 128-key tile");
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
  attn::fence_regs(s);
  attn::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t desc_a = attn::sw128_desc(q_addr + (kk >> 2) * (64 * 128) + (kk & 3) * 32, 16, 1024);
    if constexpr (kWide) {
      const uint64_t desc = attn::sw128_desc(k_addr + (kk >> 2) * (kKeys * 128) + (kk & 3) * 32, 16, 1024);
      attn::wgmma_m64n128k16_ss<T, 0>(*reinterpret_cast<float(*)[16][4]>(&s[0][0]), desc_a, desc);
    } else {
#pragma unroll
      for (int h = 0; h < kKeys / 64; ++h) {
        const uint64_t desc =
            attn::sw128_desc(k_addr + (kk >> 2) * (kKeys * 128) + h * (64 * 128) + (kk & 3) * 32, 16, 1024);
        attn::wgmma_m64n64k16_ss<T, 0>(*reinterpret_cast<float(*)[8][4]>(&s[h * 8][0]), desc_a, desc);
      }
    }
  }
  attn::wgmma_commit();
}

#endif  // LITE_SRT_SM90A

// The pieces of a wgmma kernel's tile loop and epilogue that do not touch the tensor cores, shared by
// extend_wgmma_kernel and extend_wgmma_ws_kernel (one warp's two rows tr0 = tr1 - 8 of S and O), besides mask_tile.

// Normalizes the warp's rows of O by their softmax sums and writes them from output row `row` on (a row past the
// extend, ok = false, is not written).
template <typename T, int D>
__device__ __forceinline__ void store_rows(const AttentionArgs& a, const float (&o)[D / 64][8][4],
                                           const attn::RowState& st, int64_t row, int64_t head, bool ok0, bool ok1,
                                           int tig) {
  const float l0 = attn::quad_sum(st.l0), l1 = attn::quad_sum(st.l1);
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  T* out0 = static_cast<T*>(a.out) + row * a.out_stride.row + head * a.out_stride.head;
  T* out1 = out0 + 8 * a.out_stride.row;
#pragma unroll
  for (int c = 0; c < D / 64; ++c) {
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int col = c * 64 + n * 8 + tig * 2;
      if (ok0) *reinterpret_cast<uint32_t*>(out0 + col) = attn::pack2<T>(o[c][n][0] * inv0, o[c][n][1] * inv0);
      if (ok1) *reinterpret_cast<uint32_t*>(out1 + col) = attn::pack2<T>(o[c][n][2] * inv1, o[c][n][3] * inv1);
    }
  }
}

template <typename T, int D, bool kOverlap, int kKeys>
__global__ void __launch_bounds__(kMmaThreads, 1) extend_wgmma_kernel(AttentionArgs a, int tiles_bound) {
#if defined(LITE_SRT_SM90A)
  using Pipe = WgPipe<kOverlap, kKeys>;
  constexpr int kTileElems = kKeys * D;
  constexpr int kChunksD = D / 64;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // Swizzle atoms need 1024-byte alignment, which the dynamic shared-memory base does not promise.
  const uint32_t raw_addr = attn::smem_u32(smem_raw);
  T* qs = reinterpret_cast<T*>(smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr));  // kQSmem only
  T* ks = qs + (Pipe::kQSmem ? kBlockQ * D : 0);
  T* vs = ks + Pipe::kStages * kTileElems;
  int* sm_slot = reinterpret_cast<int*>(vs + Pipe::kStages * kTileElems);
  __shared__ int64_t tile_info[2];

  if (threadIdx.x == 0) {
    int64_t req = -1, tile_in_req = 0;
    if (!find_tile(a, tiles_bound - 1 - static_cast<int64_t>(blockIdx.y), kBlockQ, req, tile_in_req)) req = -1;
    tile_info[0] = req;
    tile_info[1] = tile_in_req;
  }
  __syncthreads();
  if (tile_info[0] < 0) return;
  const auto [b, head, kvh, n_ext, prefix, t0, row0, kv_end] = query_tile(a, tile_info);
  const int n_tiles = static_cast<int>(ceil_div(kv_end, kKeys));
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;

  const int warp = threadIdx.x / WARP_SIZE;
  const int lane = threadIdx.x % WARP_SIZE;
  const int g = lane >> 2;
  const int tig = lane & 3;
  const int64_t tw = t0 + warp * 16;  // this warp's first query token (warp w of warpgroup w / 4: rows 16 w..)
  const int64_t tr0 = tw + g, tr1 = tr0 + 8;
  const int64_t first_limit = prefix + tw;  // keys <= this are visible to every row of the warp
  // wgmma is warpgroup-wide, so tiles are skipped per warpgroup (64 rows): it computes tiles [0, wg_tiles) and
  // warps mask their own rows inside them.
  const int64_t tg = t0 + (warp / 4) * 64;
  const int wg_tiles = tg < n_ext ? static_cast<int>(min(prefix + tg + 63, kv_end - 1) / kKeys) + 1 : 0;

  uint32_t qa[Pipe::kQSmem ? 1 : D / 16][4];
  const T* wg_qs = qs + (warp / 4) * 64 * D;  // this warpgroup's 64 Q rows (kQSmem)
  if constexpr (Pipe::kQSmem) {
    // Each warpgroup copies its own rows (past the extend: zeros); the first copy group waits for them.
    const T* qb = static_cast<const T*>(a.q) + (a.extend_start_loc[b] + tg) * a.q_stride.row + head * a.q_stride.head;
    const int wtid = threadIdx.x % 128;
#pragma unroll
    for (int i = 0; i < 64 * (D / 8) / 128; ++i) {
      const int c = wtid + i * 128;
      const int r = c / (D / 8), col = (c % (D / 8)) * 8;
      const bool ok = tg + r < n_ext;
      attn::cp_async_16(const_cast<T*>(wg_qs) + attn::sw128_offset<64>(r, col), ok ? qb + r * a.q_stride.row + col : qb,
                        ok);
    }
  } else {
    const T* q0 = static_cast<const T*>(a.q) + (row0 + warp * 16 + g) * a.q_stride.row + head * a.q_stride.head;
    attn::load_q_frags<T, D>(*reinterpret_cast<uint32_t(*)[D / 16][4]>(&qa[0][0]), q0, q0 + 8 * a.q_stride.row,
                             tr0 < n_ext, tr1 < n_ext, tig);
  }
  float o[kChunksD][8][4];
  attn::zero_rows(o);
  attn::RowState st;
  const float qk_scale = a.scale * attn::kLog2e;
  const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head;
  const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head;

  const int tid = threadIdx.x;
  int next0 = -1, next1 = -1;
  if (tid < kKeys) {
#pragma unroll
    for (int s = 0; s < Pipe::kSlotRing; ++s) {
      sm_slot[s * kKeys + tid] = attn::slot_at(a, table_row, s * kKeys + tid, kv_end);
    }
    next0 = attn::slot_at(a, table_row, Pipe::kSlotRing * kKeys + tid, kv_end);
    next1 = attn::slot_at(a, table_row, (Pipe::kSlotRing + 1) * kKeys + tid, kv_end);
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < Pipe::kDist; ++s) {
    if (s < n_tiles) {
      issue_kv_tile_sw128<T, D, kKeys>(ks + s * kTileElems, vs + s * kTileElems, sm_slot + s * kKeys, k_base,
                                a.k_stride.row, v_base, a.v_stride.row);
    }
    attn::cp_async_commit();
  }

  // kOverlap: P of the previous tile, whose P V product goes out with this tile's S. It starts as zeros, and the
  // first tile's product (0 x its own V) adds nothing: every wgmma is issued on every computed tile, with no
  // branch around it, which ptxas needs to keep them asynchronous (otherwise it serializes them, warning C7518).
  uint32_t pa[kKeys / 16][4] = {};
  for (int it = 0; it < n_tiles; ++it) {
    attn::cp_async_wait<Pipe::kDist - 1>();
    attn::fence_proxy_async();  // cp.async wrote the tile through the generic proxy; wgmma reads it async
    __syncthreads();            // tile `it` is visible; the stage refilled below is no longer read
    const int pre = it + Pipe::kDist;
    if (pre < n_tiles) {
      const int st_i = pre % Pipe::kStages;
      issue_kv_tile_sw128<T, D, kKeys>(ks + st_i * kTileElems, vs + st_i * kTileElems,
                                sm_slot + (pre % Pipe::kSlotRing) * kKeys, k_base, a.k_stride.row, v_base,
                                a.v_stride.row);
    }
    attn::cp_async_commit();
    if (tid < kKeys) {
      sm_slot[(it % Pipe::kSlotRing) * kKeys + tid] = next0;
      next0 = next1;
      next1 = attn::slot_at(a, table_row, (it + Pipe::kSlotRing + 2) * static_cast<int64_t>(kKeys) + tid, kv_end);
    }

    if (it >= wg_tiles) continue;  // no key of this tile is visible to this warpgroup's rows
    const uint32_t k_addr = attn::smem_u32(ks + (it % Pipe::kStages) * kTileElems);
    const uint32_t v_addr = attn::smem_u32(vs + (it % Pipe::kStages) * kTileElems);

    float s[kKeys / 8][4];
    if constexpr (Pipe::kQSmem) {
      issue_qk_ss<T, D, kKeys>(s, attn::smem_u32(wg_qs), k_addr);
    } else {
      attn::issue_qk<T, D, kKeys>(s, *reinterpret_cast<uint32_t(*)[D / 16][4]>(&qa[0][0]), k_addr);
    }
    if constexpr (kOverlap) {
      const int prev = it > 0 ? it - 1 : 0;
      attn::issue_pv<T, D, kKeys>(o, pa, attn::smem_u32(vs + (prev % Pipe::kStages) * kTileElems));
      attn::wgmma_wait<1>();  // S is done; the P V product of the previous tile may still run
    } else {
      attn::wgmma_wait<0>();
    }
    attn::fence_regs(s);

    mask_tile<kKeys>(s, static_cast<int64_t>(it) * kKeys, first_limit, kv_end, prefix, tr0, tr1, tig);
    float alpha0, alpha1;
    attn::softmax_probs<kKeys / 8>(s, st, qk_scale, alpha0, alpha1);
    if constexpr (kOverlap) {
      attn::wgmma_wait<0>();
      attn::fence_regs_u32(pa);  // keeps the previous P's registers untouched until the wgmma reading them is done
    }
#pragma unroll
    for (int c = 0; c < kChunksD; ++c) {
      attn::fence_regs(o[c]);
      attn::rescale_rows<8>(o[c], alpha0, alpha1);
    }
    attn::pack_p<T, kKeys>(pa, s);
    if constexpr (!kOverlap) {
      attn::issue_pv<T, D, kKeys>(o, pa, v_addr);
      attn::wgmma_wait<0>();
    }
#pragma unroll
    for (int c = 0; c < kChunksD; ++c) attn::fence_regs(o[c]);
  }
  attn::cp_async_wait<0>();
  if constexpr (kOverlap) {
    // The last computed tile's P V. Its stage is still intact: the other warpgroup computes at most one tile
    // more, and no copy after the last tile reaches back kStages tiles. A warpgroup with no tile adds 0 x V.
    const int last = wg_tiles > 0 ? wg_tiles - 1 : 0;
    attn::issue_pv<T, D, kKeys>(o, pa, attn::smem_u32(vs + (last % Pipe::kStages) * kTileElems));
    attn::wgmma_wait<0>();
#pragma unroll
    for (int c = 0; c < kChunksD; ++c) attn::fence_regs(o[c]);
  }

  store_rows<T, D>(a, o, st, row0 + warp * 16 + g, head, tr0 < n_ext, tr1 < n_ext, tig);
#endif  // LITE_SRT_SM90A
}

// Warp-specialized Hopper kernel (the default at d=128; LITE_SRT_EXTEND_KERNEL=wgmma_ws forces it): FlashAttention-3's
// scheduling on the tiles, gather and math of extend_wgmma_kernel<T, D, true, 128>. 384 threads: warpgroup 0 only
// gathers (Q once, then 128-key K/V tiles by slot with cp.async into a 3-stage ring) and after setmaxnreg.dec keeps
// 40 registers;
// warpgroups 1 and 2 are the two 64-row consumers of the old kernel and take the freed registers (232 each), so
// no consumer spends issue slots or registers on copies and no copy waits for a softmax. Producer and consumers
// meet at shared-memory mbarriers per stage: full[s] completes when all 128 producer threads have seen their own
// cp.async group land, fenced it for the async proxy and arrived (release); empty[s] when all 256 consumer
// threads have arrived after the wgmma that read the stage completed. Consumers keep the kOverlap schedule (P V
// of tile j - 1 behind S of tile j), so a stage is held one tile past its S: of the 3 stages, 2 are read and one
// is being filled. Ping-pong: named barriers 2 and 3 hand the tensor cores from one consumer warpgroup to the
// other at every tile, so one's softmax runs under the other's products. Both products run on m64n128k16
// instructions (kWide; the m64n64 form, kept for A/B as LITE_SRT_EXTEND_KERNEL=wgmma_ws64, reads Q from shared
// memory twice as often: 1-3% slower on an H100, 3-6% on an H200). Causal skips stay per warpgroup, but a
// consumer goes through the full/empty and ping-pong handshakes of every tile of the block, computed or not.
constexpr int kWsThreads = 384;  // producer warpgroup + 2 consumer warpgroups
constexpr int kWsKeys = 128;
constexpr int kWsStages = 3;
constexpr int kWsSlotRing = 2;  // slot indices of tiles j and j + 1 (the producer's own ring)
constexpr int kWsProducerRegs = 40;
constexpr int kWsConsumerRegs = 232;
static_assert(128 * kWsProducerRegs + 2 * 128 * kWsConsumerRegs <= 65536, "the register file is 64K words");

template <typename T, int D>
constexpr size_t extend_ws_smem_bytes() {
  return 1024 + kBlockQ * D * sizeof(T) + 2 * kWsStages * kWsKeys * D * sizeof(T) + kWsSlotRing * kWsKeys * sizeof(int);
}

template <typename T, int D, bool kWide>
__global__ void __launch_bounds__(kWsThreads, 1) extend_wgmma_ws_kernel(AttentionArgs a, int tiles_bound) {
#if defined(LITE_SRT_SM90A)
  constexpr int kKeys = kWsKeys;
  constexpr int kTileElems = kKeys * D;
  constexpr int kChunksD = D / 64;
  constexpr int kWg = 128;  // threads per warpgroup
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // Swizzle atoms need 1024-byte alignment, which the dynamic shared-memory base does not promise.
  const uint32_t raw_addr = attn::smem_u32(smem_raw);
  T* qs = reinterpret_cast<T*>(smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr));  // 2 x [D / 64][64][64]
  T* ks = qs + kBlockQ * D;
  T* vs = ks + kWsStages * kTileElems;
  int* sm_slot = reinterpret_cast<int*>(vs + kWsStages * kTileElems);  // producer only
  __shared__ int64_t tile_info[2];
  __shared__ __align__(8) uint64_t full_bar[kWsStages];
  __shared__ __align__(8) uint64_t empty_bar[kWsStages];

  if (threadIdx.x == 0) {
    int64_t req = -1, tile_in_req = 0;
    if (!find_tile(a, tiles_bound - 1 - static_cast<int64_t>(blockIdx.y), kBlockQ, req, tile_in_req)) req = -1;
    tile_info[0] = req;
    tile_info[1] = tile_in_req;
#pragma unroll
    for (int s = 0; s < kWsStages; ++s) {
      attn::mbar_init(&full_bar[s], kWg);       // every producer thread arrives
      attn::mbar_init(&empty_bar[s], 2 * kWg);  // every consumer thread arrives
    }
    attn::mbar_init_fence();
  }
  __syncthreads();
  if (tile_info[0] < 0) return;  // all 384 threads alike, before any other barrier
  const auto [b, head, kvh, n_ext, prefix, t0, row0, kv_end] = query_tile(a, tile_info);
  const int n_tiles = static_cast<int>(ceil_div(kv_end, kKeys));  // >= 1: the tile's first row sees key 0..

  if (threadIdx.x < kWg) {
    // ---- Producer. Tile j goes to stage j % kWsStages. Its copies are published (full) one tile late, when the
    // next tile's copies are out and cp.async.wait_group has landed it, or earlier, before the producer blocks
    // on a free stage (then it is the only group in flight): a consumer never waits on a tile that has landed.
    attn::setmaxnreg_dec<kWsProducerRegs>();
    const int p = threadIdx.x;
    const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;
    const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head;
    const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head;
    {
      // Q (rows past the extend: zeros) joins tile 0's copy group, so full[0] publishes it too.
      // Thread p copies column chunk p % 16 of rows p / 16 + 8 i (the same fixed-phase walk as the K/V tiles).
      constexpr int kRowStep = kWg / (D / 8);
      const int r0 = p / (D / 8), col = (p % (D / 8)) * 8;
      const T* qb = static_cast<const T*>(a.q) + row0 * a.q_stride.row + head * a.q_stride.head + col;
      T* qd = qs + attn::sw128_offset<64>(r0, col);
#pragma unroll
      for (int i = 0; i < kBlockQ / kRowStep; ++i) {
        const int r = r0 + i * kRowStep;
        const bool ok = t0 + r < n_ext;
        // Rows 64.. belong to the second consumer warpgroup's [D / 64][64][64] block.
        attn::cp_async_16(qd + (i * kRowStep / 64) * (64 * D) + (i * kRowStep % 64) * 64,
                          ok ? qb + r * a.q_stride.row : qb, ok);
      }
    }
    // Thread p gathers the slot of key p of each tile, two tiles ahead of the copies that read it.
    int next0 = attn::slot_at(a, table_row, p, kv_end);
    int next1 = attn::slot_at(a, table_row, kKeys + p, kv_end);
    for (int j = 0; j < n_tiles; ++j) {
      const int stage = j % kWsStages;
      // Ring entry j % 2 last held tile j - 2, whose copies every producer thread issued before the named
      // barrier of tile j - 1.
      sm_slot[(j % kWsSlotRing) * kKeys + p] = next0;
      next0 = next1;
      next1 = attn::slot_at(a, table_row, (j + 2) * static_cast<int64_t>(kKeys) + p, kv_end);
      if (j >= kWsStages) {
        // Tile j - 1 is this thread's only group in flight: publish it before blocking on the stage.
        attn::cp_async_wait<0>();
        attn::fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
        attn::mbar_arrive(&full_bar[(j - 1) % kWsStages]);
        // The stage last held tile j - kWsStages, the (j / kWsStages - 1)-th use of it: wait until the consumers
        // completed that phase of empty[stage] (parity (j / kWsStages - 1) & 1). V of a tile is read one tile
        // after its S (the overlapped P V), and consumers release a stage only after that product completed.
        attn::mbar_wait(&empty_bar[stage], static_cast<uint32_t>((j / kWsStages - 1) & 1));
      }
      attn::named_bar_sync(1, kWg);  // the slots of tile j are visible to every producer thread
      attn::issue_kv_tile_sw128_wg<T, D, kKeys, kWg>(p, ks + stage * kTileElems, vs + stage * kTileElems,
                                               sm_slot + (j % kWsSlotRing) * kKeys, k_base, a.k_stride.row, v_base,
                                               a.v_stride.row);
      attn::cp_async_commit();
      if (j >= 1 && j < kWsStages) {  // one tile of lag while stages are free
        attn::cp_async_wait<1>();  // tile j - 1 has landed (tile j may still be in flight)
        attn::fence_proxy_async();
        attn::mbar_arrive(&full_bar[j - 1]);
      }
    }
    attn::cp_async_wait<0>();  // drain: the last tile is always still unpublished here
    attn::fence_proxy_async();
    attn::mbar_arrive(&full_bar[(n_tiles - 1) % kWsStages]);
    return;
  }

  // ---- Consumers: warpgroup cw owns query rows 64 cw .. 64 cw + 63 of the tile, exactly as warpgroup cw of
  // extend_wgmma_kernel (warp numbering included).
  attn::setmaxnreg_inc<kWsConsumerRegs>();
  const int cw = threadIdx.x / kWg - 1;
  const int warp = (threadIdx.x - kWg) / WARP_SIZE;
  const int lane = threadIdx.x % WARP_SIZE;
  const int g = lane >> 2;
  const int tig = lane & 3;
  const int64_t tw = t0 + warp * 16;
  const int64_t tr0 = tw + g, tr1 = tr0 + 8;
  const int64_t first_limit = prefix + tw;  // keys <= this are visible to every row of the warp
  const int64_t tg = t0 + cw * 64;
  // Broadcast from lane 0 so ptxas can prove the tile count warp-uniform (it then keeps the loop's barrier
  // addresses in uniform registers; a loop branched on a count it cannot prove uniform while a wgmma is in
  // flight makes it serialize every wgmma, ptxas C7518).
  const int wg_tiles = __shfl_sync(
      0xffffffffu, tg < n_ext ? static_cast<int>(min(prefix + tg + 63, kv_end - 1) / kKeys) + 1 : 0, 0);
  const uint32_t q_addr = attn::smem_u32(qs + cw * 64 * D);

  // Ping-pong: consumer cw takes its turn on barrier 2 + cw before issuing a tile's products and hands the turn
  // over on barrier 3 - cw right after. Over the block's n_tiles tiles (computed or skipped alike):
  //   barrier 2: consumer 0 syncs n_tiles times; consumer 1 arrives once up front + after tiles 0..n_tiles - 2;
  //   barrier 3: consumer 1 syncs n_tiles times; consumer 0 arrives after each of its n_tiles tiles.
  // Each generation is 128 + 128 threads, and the alternation keeps a warpgroup from arriving twice in one.
  const int bar_mine = 2 + cw, bar_other = 3 - cw;
  if (cw == 1) attn::named_bar_arrive(2, 2 * kWg);  // consumer 0 goes first

  float o[kChunksD][8][4];
  attn::zero_rows(o);
  attn::RowState st;
  const float qk_scale = a.scale * attn::kLog2e;

  // P of the previous tile, as in extend_wgmma_kernel<kOverlap = true>: zeros at first, so the first tile's
  // P V (0 x its own V) adds nothing and every wgmma is issued on every computed tile with no branch around it.
  uint32_t pa[kKeys / 16][4] = {};
  for (int it = 0; it < wg_tiles; ++it) {
    const int stage = it % kWsStages;
    // Tile `it` has landed. The producer fenced its copies for the async proxy before its release arrive, the
    // same writer-side rule as extend_wgmma_kernel's fence before __syncthreads, so no fence is needed here.
    attn::mbar_wait(&full_bar[stage], static_cast<uint32_t>((it / kWsStages) & 1));
    const int prev = it > 0 ? it - 1 : 0;
    float s[kKeys / 8][4];
    attn::named_bar_sync(bar_mine, 2 * kWg);
    issue_qk_ss<T, D, kKeys, kWide>(s, q_addr, attn::smem_u32(ks + stage * kTileElems));
    attn::issue_pv<T, D, kKeys, kWide>(o, pa, attn::smem_u32(vs + (prev % kWsStages) * kTileElems));
    if (cw == 0 || it + 1 < n_tiles) attn::named_bar_arrive(bar_other, 2 * kWg);
    attn::wgmma_wait<1>();  // S is done; the P V product of the previous tile may still run
    attn::fence_regs(s);

    mask_tile<kKeys>(s, static_cast<int64_t>(it) * kKeys, first_limit, kv_end, prefix, tr0, tr1, tig);
    float alpha0, alpha1;
    attn::softmax_probs<kKeys / 8>(s, st, qk_scale, alpha0, alpha1);
    // ptxas places this wait above the softmax (a tile's P V does not run under its own warpgroup's softmax,
    // only under the other's). Forcing the order (the wait behind the loop test) measured no faster on an H100.
    attn::wgmma_wait<0>();
    attn::fence_regs_u32(pa);  // keeps the previous P's registers untouched until the wgmma reading them is done
    // Tile it - 1 is read no more (its S completed last tile, its P V just now): this thread releases its stage.
    if (it > 0) attn::mbar_arrive(&empty_bar[prev % kWsStages]);
#pragma unroll
    for (int c = 0; c < kChunksD; ++c) {
      attn::fence_regs(o[c]);
      attn::rescale_rows<8>(o[c], alpha0, alpha1);
    }
    attn::pack_p<T, kKeys>(pa, s);
#pragma unroll
    for (int c = 0; c < kChunksD; ++c) attn::fence_regs(o[c]);
  }
  if (wg_tiles > 0) {
    // The last computed tile's P V; its stage is held (not released) until this completes. A warpgroup with no
    // tile has no rows to write and no stage to release.
    const int last = wg_tiles - 1;
    attn::issue_pv<T, D, kKeys, kWide>(o, pa, attn::smem_u32(vs + (last % kWsStages) * kTileElems));
    attn::wgmma_wait<0>();
#pragma unroll
    for (int c = 0; c < kChunksD; ++c) attn::fence_regs(o[c]);
    attn::mbar_arrive(&empty_bar[last % kWsStages]);
  }
  // Tiles none of this warpgroup's rows sees (a causal suffix): the handshakes only, so that the phases of
  // full/empty and the ping-pong generations stay in step with the producer and the other consumer.
  for (int it = wg_tiles; it < n_tiles; ++it) {
    attn::mbar_wait(&full_bar[it % kWsStages], static_cast<uint32_t>((it / kWsStages) & 1));
    attn::named_bar_sync(bar_mine, 2 * kWg);
    if (cw == 0 || it + 1 < n_tiles) attn::named_bar_arrive(bar_other, 2 * kWg);
    attn::mbar_arrive(&empty_bar[it % kWsStages]);
  }

  store_rows<T, D>(a, o, st, row0 + warp * 16 + g, head, tr0 < n_ext, tr1 < n_ext, tig);
#endif  // LITE_SRT_SM90A
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

// Which tensor-core kernel serves fp16/bf16. Measured on an H200 (docs/BENCHMARKS.md): with mma.sync, 32 rows
// per warp (extend_mma2_kernel) wins at d=64 and 16 rows (extend_mma_kernel) at d=128, where the 32-row kernel
// spills; on sm_90a the warp-specialized wgmma kernel serves d=128, ahead of the 128-key overlapped kernel (the
// default before it) by 5-9% (at d=64, where the softmax weighs more against the halved matrix work, mma32 stayed
// ahead of every wgmma variant).
// LITE_SRT_EXTEND_KERNEL = mma16 | mma32 | wgmma (overlapped, 64-key tiles) | wgmma128 (overlapped, 128-key tiles,
// Q in shared memory) | wgmma1 (not overlapped) | wgmma_ws (warp-specialized, ping-pong; d=128 only, mma32 at
// d=64) | wgmma_ws64 (the same on m64n64 instructions) forces one (the wgmma ones only where available), for A/B
// benchmarks and tests; it is read on every launch so a benchmark can switch it between calls.
enum class ExtendKernel { kMma16, kMma32, kWgmma, kWgmma128, kWgmmaSimple, kWgmmaWs, kWgmmaWs64 };

template <typename T, int D>
ExtendKernel choose_kernel() {
  const char* v = std::getenv("LITE_SRT_EXTEND_KERNEL");
  const std::string forced = v == nullptr ? "" : v;
  bool wgmma = false;
#if !defined(USE_ROCM)
  wgmma = has_sm90a_code<extend_wgmma_kernel<T, D, true, 64>>();
#endif
  const ExtendKernel portable = D <= 64 ? ExtendKernel::kMma32 : ExtendKernel::kMma16;
  if (forced == "mma16") return ExtendKernel::kMma16;
  if (forced == "mma32") return ExtendKernel::kMma32;
  if (forced == "wgmma") return wgmma ? ExtendKernel::kWgmma : portable;
  if (forced == "wgmma1") return wgmma ? ExtendKernel::kWgmmaSimple : portable;
  if (forced == "wgmma128") return wgmma ? ExtendKernel::kWgmma128 : portable;
  bool ws = false;  // the warp-specialized kernel: d = 128 only
#if !defined(USE_ROCM)
  if constexpr (D > 64) ws = has_sm90a_code<extend_wgmma_ws_kernel<T, D, true>>();
#endif
  if (forced == "wgmma_ws") return ws ? ExtendKernel::kWgmmaWs : portable;
  if (forced == "wgmma_ws64") return ws ? ExtendKernel::kWgmmaWs64 : portable;
  // Default on Hopper at d = 128: wgmma_ws, 5-9% above wgmma128 on every extend row of bench_kernels (H200,
  // docs/BENCHMARKS.md session 7). At d = 64 the 64-key mma.sync kernel still beats every wgmma variant.
  if (ws) return ExtendKernel::kWgmmaWs;
  return wgmma && D > 64 ? ExtendKernel::kWgmma128 : portable;
}

template <typename T, int D, bool kOverlap, int kKeys>
void launch_wgmma(const AttentionArgs& a, dim3 grid, int tiles, cudaStream_t stream) {
#if !defined(USE_ROCM)
  constexpr size_t smem = extend_wg_smem_bytes<T, D, kOverlap, kKeys>();
  set_smem_opt_in<extend_wgmma_kernel<T, D, kOverlap, kKeys>>(smem);
  extend_wgmma_kernel<T, D, kOverlap, kKeys><<<grid, kMmaThreads, smem, stream>>>(a, tiles);
#endif
}

template <typename T, int D, bool kWide>
void launch_wgmma_ws(const AttentionArgs& a, dim3 grid, int tiles, cudaStream_t stream) {
#if !defined(USE_ROCM)
  constexpr size_t smem = extend_ws_smem_bytes<T, D>();
  // 227 KB opt-in limit, less the kernel's static shared memory (tile_info and the mbarriers).
  static_assert(smem + 64 <= 227 * 1024, "wgmma_ws shared memory");
  set_smem_opt_in<extend_wgmma_ws_kernel<T, D, kWide>>(smem);
  extend_wgmma_ws_kernel<T, D, kWide><<<grid, kWsThreads, smem, stream>>>(a, tiles);
#endif
}

template <typename T, int D>
void launch_typed(const AttentionArgs& a, cudaStream_t stream) {
#if !defined(USE_ROCM)
  if constexpr (sizeof(T) == 2) {
    // Every request contributes at most one partial tile, so this bounds the tiles without reading lengths.
    const int64_t tiles = ceil_div(a.tokens, kBlockQ) + a.batch;
    const dim3 grid(static_cast<unsigned>(a.q_heads), static_cast<unsigned>(tiles));
    switch (choose_kernel<T, D>()) {
      case ExtendKernel::kWgmma:
        launch_wgmma<T, D, true, 64>(a, grid, static_cast<int>(tiles), stream);
        break;
      case ExtendKernel::kWgmma128:
        launch_wgmma<T, D, true, 128>(a, grid, static_cast<int>(tiles), stream);
        break;
      case ExtendKernel::kWgmmaSimple:
        launch_wgmma<T, D, false, 64>(a, grid, static_cast<int>(tiles), stream);
        break;
      case ExtendKernel::kWgmmaWs:  // chosen only for D > 64
        if constexpr (D > 64) launch_wgmma_ws<T, D, true>(a, grid, static_cast<int>(tiles), stream);
        break;
      case ExtendKernel::kWgmmaWs64:
        if constexpr (D > 64) launch_wgmma_ws<T, D, false>(a, grid, static_cast<int>(tiles), stream);
        break;
      case ExtendKernel::kMma32: {
        constexpr size_t smem = extend_w2_smem_bytes<T, D>();
        set_smem_opt_in<extend_mma2_kernel<T, D>>(smem);
        extend_mma2_kernel<T, D><<<grid, kW2Threads, smem, stream>>>(a, static_cast<int>(tiles));
        break;
      }
      case ExtendKernel::kMma16: {
        constexpr size_t smem = extend_smem_bytes<T, D>();
        set_smem_opt_in<extend_mma_kernel<T, D>>(smem);
        extend_mma_kernel<T, D><<<grid, kMmaThreads, smem, stream>>>(a, static_cast<int>(tiles));
        break;
      }
    }
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
