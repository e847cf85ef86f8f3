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
// SIMT path: float32 and ROCm (no mma.sync there), one warp per (token, head); correct but slow.
#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../cuda_utils.cuh"
#include "attention.h"
#include "attn_mma.cuh"

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
  const int64_t b = tile_info[0];
  if (b < 0) return;
  const int64_t head = blockIdx.x;  // heads of one KV group run side by side and share K/V through L2
  const int64_t kvh = head / (a.q_heads / a.kv_heads);
  const int64_t n_ext = a.extend_lens[b];
  const int64_t seq_len = a.seq_lens[b];
  const int64_t prefix = seq_len - n_ext;
  const int64_t t0 = tile_info[1] * kBlockQ;  // first query token of the tile (index within the extend)
  const int64_t row0 = a.extend_start_loc[b] + t0;
  const int64_t kv_end = min(seq_len, prefix + t0 + kBlockQ);
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
    if (kt + kBlockK - 1 > first_limit || kt + kBlockK > kv_end) {  // the diagonal or the end: mask
#pragma unroll
      for (int n = 0; n < kBlockK / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t j = kt + n * 8 + tig * 2 + (e & 1);
          const int64_t limit = prefix + (e < 2 ? tr0 : tr1);
          if (j > limit || j >= kv_end) s[n][e] = -INFINITY;
        }
      }
    }
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
  const int64_t b = tile_info[0];
  if (b < 0) return;
  const int64_t head = blockIdx.x;
  const int64_t kvh = head / (a.q_heads / a.kv_heads);
  const int64_t n_ext = a.extend_lens[b];
  const int64_t seq_len = a.seq_lens[b];
  const int64_t prefix = seq_len - n_ext;
  const int64_t t0 = tile_info[1] * kBlockQ;
  const int64_t row0 = a.extend_start_loc[b] + t0;
  const int64_t kv_end = min(seq_len, prefix + t0 + kBlockQ);
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

// Which tensor-core kernel serves fp16/bf16: 32 query rows per warp (extend_mma2_kernel) or 16 (extend_mma_kernel).
// Measured on an H200: 32 rows wins at d=64 (236 vs 178 TFLOP/s); at d=128 it needs more than 255 registers and
// spills, so 16 rows wins there (252 vs 239). LITE_SRT_EXTEND_WARP_ROWS=16 or 32 forces one, for A/B benchmarks.
bool use_two_tile_warps(int head_dim) {
  static const int forced = [] {
    const char* v = std::getenv("LITE_SRT_EXTEND_WARP_ROWS");
    return v == nullptr ? 0 : std::atoi(v);
  }();
  return forced == 0 ? head_dim <= 64 : forced == 32;
}

template <typename T, int D>
void launch_typed(const AttentionArgs& a, cudaStream_t stream) {
#if !defined(USE_ROCM)
  if constexpr (sizeof(T) == 2) {
    // Every request contributes at most one partial tile, so this bounds the tiles without reading lengths.
    const int64_t tiles = ceil_div(a.tokens, kBlockQ) + a.batch;
    const dim3 grid(static_cast<unsigned>(a.q_heads), static_cast<unsigned>(tiles));
    if (use_two_tile_warps(D)) {
      constexpr size_t smem = extend_w2_smem_bytes<T, D>();
      set_smem_opt_in<extend_mma2_kernel<T, D>>(smem);
      extend_mma2_kernel<T, D><<<grid, kW2Threads, smem, stream>>>(a, static_cast<int>(tiles));
    } else {
      constexpr size_t smem = extend_smem_bytes<T, D>();
      set_smem_opt_in<extend_mma_kernel<T, D>>(smem);
      extend_mma_kernel<T, D><<<grid, kMmaThreads, smem, stream>>>(a, static_cast<int>(tiles));
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
