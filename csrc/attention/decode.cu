// Paged decode attention: one query token per request, K/V gathered through req_to_token.
//
// Tensor-core path (fp16/bf16, NVIDIA sm_80+): grid = (KV head x chunk of <= 16 query heads, request, split).
// The query heads of a GQA group are the rows of one 16-row mma tile, so every K/V row is read from HBM once
// for the whole group. The block streams its split of the keys in 64-key tiles gathered with cp.async into a
// 3-stage shared-memory ring (the slot indices of later tiles are prefetched into shared memory, so no load
// waits on an index load); each of the 4 warps takes 16 keys of a tile, runs S = Q K^T and O += P V with
// ldmatrix + mma.sync, keeps its own online softmax, and the warps are merged through shared memory at the end.
// Splits are chosen from the SM count so the grid fills the GPU and, given the step's key counts, so no long
// request sets the launch's length (balanced_splits); the last split of a request merges the partials by
// log-sum-exp (merge_if_last), or a second kernel does.
//
// SIMT path (float32, ROCm): a key is handled by head_dim / (16 B / sizeof(T)) lanes with 16-byte loads and the
// group's query heads in registers; lane groups keep their own online softmax, merged through shared memory.
#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../cuda_utils.cuh"
#include "../launch.cuh"
#include "attention.h"
#include "attn_mma.cuh"
#include "attn_wgmma.cuh"

namespace lite_srt {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxSplits = 64;
// Balanced key splits (the rule is at balanced_splits and split_floor). H200 (docs/BENCHMARKS.md): 16-128 requests of
// 1-9k keys 0-34% faster than the one-wave plan with the quarter (kBalanceDiv; the whole share: 0-30%); the per-SM
// floor instead of a fixed 2048 makes 8-24 requests of 0.1-2k keys 17-23% faster; 64 waves instead of 16 let 160-224
// requests of 1-9k keys split their longest in two (2% faster).
constexpr int kMinSplitKeys = 2048;
constexpr int kMinSplitKeysShort = 512;
constexpr int kBalanceDiv = 4;
constexpr int kBalanceWaves = 64;
constexpr int kMaxParts = kMaxSplits + 16;  // key splits + shared-prefix splits (kMaxSharedSplits)
constexpr float kLog2e = 1.4426950408889634f;

// How many of the grid's key splits a request uses: at least `base` (the plan's one-wave count) and one per
// `chunk` keys, where chunk is the host's min_keys or, in captured graphs, the step's value on the device
// (dev_chunk[0]). min_keys = 0: every request uses all of them (the SIMT kernel).
struct SplitRule {
  int base = 0;
  int min_keys = 0;
  IndexArray dev_chunk{nullptr, true};
};

__device__ __forceinline__ int request_splits(int64_t keys, int num_splits, const SplitRule& rule) {
  if (rule.min_keys <= 0) return num_splits;
  const int64_t chunk = rule.dev_chunk.ptr != nullptr ? max(rule.dev_chunk[0], static_cast<int64_t>(1)) : rule.min_keys;
  const int64_t want = max(static_cast<int64_t>(rule.base), ceil_div(keys, chunk));
  return static_cast<int>(max(static_cast<int64_t>(1), min(static_cast<int64_t>(num_splits), want)));
}

template <typename T, int D, int GMAX>
__global__ void __launch_bounds__(kThreads) decode_simt_kernel(AttentionArgs a, int num_splits, float* ws_out,
                                                          float* ws_lse) {
  pdl_wait();  // launch.cuh: nothing of the previous kernel's is touched before this
  pdl_launch_dependents();
  constexpr int VEC = 16 / sizeof(T);
  constexpr int TPK = D / VEC;  // lanes per key
  constexpr int GROUPS = kThreads / TPK;
  // Keys per lane group in flight per iteration (memory-level parallelism); fewer with 8 heads to avoid spills.
  constexpr int kUnroll = GMAX >= 8 ? 2 : 4;
  static_assert(TPK <= WARP_SIZE && WARP_SIZE % TPK == 0, "a key's lanes must sit in one warp");

  const int64_t b = blockIdx.z;
  const int split = blockIdx.x;
  const int64_t group_size = a.q_heads / a.kv_heads;
  const int64_t chunks = (group_size + GMAX - 1) / GMAX;
  const int64_t kvh = blockIdx.y / chunks;
  const int64_t head0 = kvh * group_size + (blockIdx.y % chunks) * GMAX;
  const int n_heads = static_cast<int>(min(static_cast<int64_t>(GMAX), kvh * group_size + group_size - head0));

  const int64_t seq_len = a.seq_lens[b];
  const int64_t per_split = (seq_len + num_splits - 1) / num_splits;
  const int64_t j_begin = split * per_split;
  const int64_t j_end = min(seq_len, j_begin + per_split);
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;

  const int lane = threadIdx.x % TPK;
  const int grp = threadIdx.x / TPK;

  float q[GMAX][VEC];
  const float qscale = a.scale * kLog2e;
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    Pack16<T> qp;
    qp.raw = make_uint4(0, 0, 0, 0);
    if (g < n_heads) qp = load_pack(static_cast<const T*>(a.q) + b * a.q_stride.row + (head0 + g) * a.q_stride.head + lane * VEC);
#pragma unroll
    for (int e = 0; e < VEC; ++e) q[g][e] = to_float(qp[e]) * qscale;
  }
  float m[GMAX], l[GMAX], acc[GMAX][VEC];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[g][e] = 0.0f;
  }

  const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head + lane * VEC;
  const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head + lane * VEC;
  // Every lane runs the same trip count (lane groups start at different keys): the shuffles below need the
  // whole warp, so a group with no key left still takes part with zeros.
  for (int64_t base = j_begin; base < j_end; base += GROUPS * kUnroll) {
    const int64_t j0 = base + grp;
    Pack16<T> kp[kUnroll], vp[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + u * GROUPS;
      valid[u] = j < j_end;
      kp[u].raw = make_uint4(0, 0, 0, 0);
      vp[u].raw = make_uint4(0, 0, 0, 0);
      if (valid[u]) {
        const int64_t slot = a.req_to_token[table_row + j];
        kp[u] = load_pack(k_base + slot * a.k_stride.row);
        vp[u] = load_pack(v_base + slot * a.v_stride.row);
      }
    }
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      float s[kUnroll];
      float block_max = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot += q[g][e] * to_float(kp[u][e]);
#pragma unroll
        for (int mask = TPK / 2; mask > 0; mask >>= 1) dot += LSRT_SHFL_XOR(dot, mask);  // all lanes take part
        s[u] = valid[u] ? dot : -FLT_MAX;
        block_max = fmaxf(block_max, s[u]);
      }
      const float alpha = exp2f(m[g] - block_max);
      float p[kUnroll];
      float p_sum = 0.0f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        p[u] = valid[u] ? exp2f(s[u] - block_max) : 0.0f;
        p_sum += p[u];
      }
      l[g] = l[g] * alpha + p_sum;
      m[g] = block_max;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float o = acc[g][e] * alpha;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) o += p[u] * to_float(vp[u][e]);
        acc[g][e] = o;
      }
    }
  }

  // Merge the lane groups' softmax states.
  __shared__ float sm_m[GROUPS][GMAX];
  __shared__ float sm_l[GROUPS][GMAX];
  __shared__ float sm_o[GROUPS][GMAX][D];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) sm_o[grp][g][lane * VEC + e] = acc[g][e];
    if (lane == 0) {
      sm_m[grp][g] = m[g];
      sm_l[grp][g] = l[g];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < n_heads * D; idx += kThreads) {
    const int g = idx / D;
    const int d = idx % D;
    float mx = -FLT_MAX;
    for (int r = 0; r < GROUPS; ++r) mx = fmaxf(mx, sm_m[r][g]);
    float total_l = 0.0f, total_o = 0.0f;
    for (int r = 0; r < GROUPS; ++r) {
      const float w = sm_l[r][g] > 0.0f ? exp2f(sm_m[r][g] - mx) : 0.0f;
      total_l += sm_l[r][g] * w;
      total_o += sm_o[r][g][d] * w;
    }
    const float o = total_l > 0.0f ? total_o / total_l : 0.0f;  // an empty context gives zeros, as the reference
    const int64_t head = head0 + g;
    if (num_splits == 1) {
      static_cast<T*>(a.out)[b * a.out_stride.row + head * a.out_stride.head + d] = from_float<T>(o);
    } else {
      const int64_t part = (b * a.q_heads + head) * num_splits + split;
      ws_out[part * D + d] = o;
      if (d == 0) ws_lse[part] = total_l > 0.0f ? mx + log2f(total_l) : -FLT_MAX;
    }
  }
}

#if !defined(USE_ROCM)
constexpr int kMmaThreads = 128;  // 4 warps
constexpr int kTileKeys = 64;
constexpr int kStages = 3;
constexpr int kMaxRows = 16;           // query heads per decode block: the rows of one mma tile
constexpr int kGroupRows = 64;         // query rows per shared-prefix block: 16 per warp
constexpr int kMaxSharedSplits = 16;

template <typename T, int D>
constexpr size_t decode_smem_bytes() {
  constexpr size_t kv = 2 * kStages * attn::KVTile<T, D, kTileKeys>::kElems * sizeof(T);
  constexpr size_t merge = (kMmaThreads / WARP_SIZE) * kMaxRows * (D + 2) * sizeof(float);
  return (kv > merge ? kv : merge) + kStages * kTileKeys * sizeof(int);
}

// The cascade's shared pass on wgmma (decode_shared_kernel<T, D, true>, sm_90a): the same ring in the 128-byte-
// swizzled layout the wgmma descriptors read ([D / 64][kTileKeys][64] per tile, no padding), 1024-byte aligned.
template <typename T, int D>
constexpr size_t decode_sw128_smem_bytes() {
  return 1024 + 2 * kStages * kTileKeys * D * sizeof(T) + kStages * kTileKeys * sizeof(int);
}

// Streams keys [j_begin, j_end) of one table row through a kStages-deep shared-memory ring in 64-key tiles
// gathered with cp.async, and calls body(k_tile, v_tile, j0) once per tile (j0 = its first key) while the tile
// is visible to the whole block. Slot indices run two tiles ahead of the K/V copies: the ring holds the slots of
// the next kStages tiles, two registers the two after, so issuing a copy never waits on a table load. Every
// thread of the block must call it; on return the ring may be reused. kSw128: tiles in the swizzled layout
// (decode_sw128_smem_bytes), published to the async proxy for wgmma.
template <typename T, int D, bool kSw128 = false, typename Body>
__device__ __forceinline__ void stream_kv_tiles(const AttentionArgs& a, int64_t table_row, int64_t j_begin,
                                                int64_t j_end, const T* k_base, const T* v_base,
                                                unsigned char* smem_raw, Body&& body) {
  using Tile = attn::KVTile<T, D, kTileKeys>;
  constexpr int kElems = kSw128 ? kTileKeys * D : Tile::kElems;
  T* ks;
  int* sm_slot;
  if constexpr (kSw128) {
    // Swizzle atoms need 1024-byte alignment, which the dynamic shared-memory base does not promise.
    const uint32_t raw_addr = attn::smem_u32(smem_raw);
    ks = reinterpret_cast<T*>(smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr));
    sm_slot = reinterpret_cast<int*>(ks + 2 * kStages * kElems);
  } else {
    ks = reinterpret_cast<T*>(smem_raw);
    sm_slot = reinterpret_cast<int*>(smem_raw + decode_smem_bytes<T, D>() - kStages * kTileKeys * sizeof(int));
  }
  T* vs = ks + kStages * kElems;
  const int n_tiles = j_end > j_begin ? static_cast<int>(ceil_div(j_end - j_begin, kTileKeys)) : 0;
  const int tid = threadIdx.x;
  auto issue = [&](int stage) {  // tile copies and their slot-ring entries share the stage index
    if constexpr (kSw128) {
      attn::issue_kv_tile_sw128_wg<T, D, kTileKeys, kMmaThreads>(tid, ks + stage * kElems, vs + stage * kElems,
                                                                 sm_slot + stage * kTileKeys, k_base, a.k_stride.row,
                                                                 v_base, a.v_stride.row);
    } else {
      attn::issue_kv_tile<T, D, kTileKeys, kMmaThreads>(ks + stage * kElems, vs + stage * kElems,
                                                        sm_slot + stage * kTileKeys, k_base, a.k_stride.row, v_base,
                                                        a.v_stride.row);
    }
  };
  int next0 = -1, next1 = -1;
  if (tid < kTileKeys) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) sm_slot[s * kTileKeys + tid] = attn::slot_at(a, table_row, j_begin + s * kTileKeys + tid, j_end);
    next0 = attn::slot_at(a, table_row, j_begin + kStages * kTileKeys + tid, j_end);
    next1 = attn::slot_at(a, table_row, j_begin + (kStages + 1) * kTileKeys + tid, j_end);
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) issue(s);
    attn::cp_async_commit();
  }
  for (int it = 0; it < n_tiles; ++it) {
    attn::cp_async_wait<kStages - 2>();
    if constexpr (kSw128) attn::fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads async
    __syncthreads();  // tile `it` is visible to all; every warp is done with the stage refilled below
    const int pre = it + kStages - 1;
    if (pre < n_tiles) issue(pre % kStages);
    attn::cp_async_commit();
    if (tid < kTileKeys) {  // the ring entry of tile `it` is free: it now holds tile it + kStages
      sm_slot[(it % kStages) * kTileKeys + tid] = next0;
      next0 = next1;
      next1 = attn::slot_at(a, table_row, j_begin + (it + kStages + 2) * static_cast<int64_t>(kTileKeys) + tid, j_end);
    }
    const int stage = it % kStages;
    body(ks + stage * kElems, vs + stage * kElems, j_begin + static_cast<int64_t>(it) * kTileKeys);
  }
  attn::cp_async_wait<0>();
  __syncthreads();
}

// Sets the scores of keys at or past j_end to -inf (NT 8-key accumulators starting at key j0).
template <int NT>
__device__ __forceinline__ void mask_tail(float (&s)[NT][4], int64_t j0, int64_t j_end, int tig) {
  if (j0 + NT * 8 <= j_end) return;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (j0 + n * 8 + tig * 2 + (e & 1) >= j_end) s[n][e] = -INFINITY;
    }
  }
}

// Where a (row, head)'s partials live: `parts` per pair, the key splits first, then the shared-prefix splits.
__device__ __forceinline__ int64_t part_index(const AttentionArgs& a, int64_t b, int64_t head, int parts, int p) {
  return (b * a.q_heads + head) * parts + p;
}

// Which partials a row merges: its first `keys` key splits (a request may use fewer than the grid's num_splits),
// then, for a row in a cascade group, the `shared` shared-prefix splits stored from part num_splits on.
struct MergeParts {
  int keys, num_splits, shared;
  __device__ __forceinline__ int count() const { return keys + shared; }
  __device__ __forceinline__ int part(int q) const { return q < keys ? q : num_splits + (q - keys); }
};

// Rows [head0, head0 + n_heads) of request b from their partials (weights 2^(lse_p - max); an empty partial has
// lse -FLT_MAX, weight 0, and its o is not used). One warp per row, the weights staged in wgt (kMaxParts floats
// per warp). The partials come from other blocks: read through L2, not L1. The merge sits on the step's critical
// path at small batch (the next kernel waits for it), so it is built for latency: the first kMergeBatch partials'
// o are loaded together with the lse values, since they do not depend on the weights, and the whole merge costs
// about one L2 round trip instead of one per few partials.
constexpr int kMergeBatch = 16;

template <int kVec>
__device__ __forceinline__ void load_partial(const float* src, float (&v)[kVec]) {
  if constexpr (kVec == 4) {
    const float4 f = __ldcg(reinterpret_cast<const float4*>(src));
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
    const float2 f = __ldcg(reinterpret_cast<const float2*>(src));
    v[0] = f.x, v[1] = f.y;
  }
}

template <typename T, int D>
__device__ __forceinline__ void merge_rows(const AttentionArgs& a, int64_t b, int64_t head0, int n_heads,
                                           MergeParts mp, int parts, const float* ws_out, const float* ws_lse,
                                           float* wgt) {
  constexpr int kWarps = kMmaThreads / WARP_SIZE;
  constexpr int kVec = D / WARP_SIZE;  // each lane owns kVec consecutive elements of the head
  const int warp = threadIdx.x / WARP_SIZE;
  const int lane = threadIdx.x % WARP_SIZE;
  const int used = mp.count();
  float* w = wgt + warp * kMaxParts;
  for (int r = warp; r < n_heads; r += kWarps) {
    const int64_t head = head0 + r;
    const int64_t base = part_index(a, b, head, parts, 0);
    const float* o = ws_out + base * D + lane * kVec;
    // An empty partial's o, possibly never written, is loaded like the others and discarded by the select.
    float first[kMergeBatch][kVec];
#pragma unroll
    for (int p = 0; p < kMergeBatch; ++p) {
      if (p < used) load_partial<kVec>(o + mp.part(p) * D, first[p]);
    }
    float mx = -FLT_MAX;
    for (int p = lane; p < used; p += WARP_SIZE) {
      const float l = __ldcg(ws_lse + base + mp.part(p));
      w[p] = l;
      mx = fmaxf(mx, l);
    }
    mx = warp_reduce_max(mx);
    __syncwarp();
    float den = 0.0f;
    for (int p = lane; p < used; p += WARP_SIZE) {
      const float wp = w[p] == -FLT_MAX ? 0.0f : exp2f(w[p] - mx);
      w[p] = wp;
      den += wp;
    }
    den = warp_reduce_sum(den);
    __syncwarp();
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    float num[kVec] = {};
#pragma unroll
    for (int p = 0; p < kMergeBatch; ++p) {
      if (p < used) {
        const float wp = w[p];
#pragma unroll
        for (int e = 0; e < kVec; ++e) num[e] += wp != 0.0f ? wp * first[p][e] : 0.0f;
      }
    }
#pragma unroll 4
    for (int p = kMergeBatch; p < used; ++p) {
      const float wp = w[p];
      float v[kVec];
      load_partial<kVec>(o + mp.part(p) * D, v);
#pragma unroll
      for (int e = 0; e < kVec; ++e) num[e] += wp != 0.0f ? wp * v[e] : 0.0f;
    }
    T* dst = static_cast<T*>(a.out) + b * a.out_stride.row + head * a.out_stride.head + lane * kVec;
#pragma unroll
    for (int e = 0; e < kVec; ++e) dst[e] = from_float<T>(num[e] * inv);
    __syncwarp();  // every lane is done with w before the next row overwrites it
  }
}

// The split merge inside the decode kernel: each block of a (request, head chunk) counts itself done on
// `counter` once its partial is visible device-wide, and the last of the request's mp.keys blocks merges the
// rows. It also resets the counter, so the next launch finds zeros. Saves the separate merge kernel per layer.
template <typename T, int D>
__device__ __forceinline__ void merge_if_last(const AttentionArgs& a, int64_t b, int64_t head0, int n_heads,
                                              MergeParts mp, int parts, const float* ws_out, const float* ws_lse,
                                              int* counter, unsigned char* smem_raw) {
  __shared__ int is_last;
  __threadfence();  // this block's partial reaches device scope before the block is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    int last = 1;
    if (mp.keys > 1) {
      last = atomicAdd(counter, 1) == mp.keys - 1;
      if (last) atomicExch(counter, 0);
    }
    is_last = last;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // the other blocks' partials are read only after their counts were seen
  merge_rows<T, D>(a, b, head0, n_heads, mp, parts, ws_out, ws_lse, reinterpret_cast<float*>(smem_raw));
}

// grid = (KV head x head chunk, request, split). A request in a cascade group attends only its own keys
// [shared_lens[b], seq_len), over request_splits(...) of the grid's num_splits (the other blocks leave at once).
// A request on one split and no shared prefix writes the output directly, else partials go to the workspace;
// with merge_counters, the last split of each (request, head chunk) merges them (merge_if_last).
template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads, 2)
    decode_mma_kernel(AttentionArgs a, IndexArray kv_start, int num_splits, SplitRule rule, int parts, int chunks,
                      float* ws_out, float* ws_lse, int* merge_counters) {
  pdl_wait();
  pdl_launch_dependents();
  using Tile = attn::KVTile<T, D, kTileKeys>;
  constexpr int kStride = Tile::kStride;
  constexpr int kWarps = kMmaThreads / WARP_SIZE;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int64_t b = blockIdx.y;
  const int64_t group = a.q_heads / a.kv_heads;
  const int64_t kvh = blockIdx.x / chunks;
  const int64_t head0 = kvh * group + (blockIdx.x % chunks) * kMaxRows;
  const int n_heads = static_cast<int>(min(static_cast<int64_t>(kMaxRows), kvh * group + group - head0));
  const int64_t seq_len = a.seq_lens[b];
  const int64_t start = kv_start.ptr != nullptr ? min(kv_start[b], seq_len) : 0;
  const int splits = request_splits(seq_len - start, num_splits, rule);
  if (static_cast<int>(blockIdx.z) >= splits) return;  // the whole block leaves, before any barrier
  const bool shared_row = parts > num_splits && kv_start.ptr != nullptr && kv_start[b] > 0;
  const bool direct = splits == 1 && !shared_row;
  // Tile-aligned splits, so only a split's last tile is partial.
  const int64_t per_split = ceil_div(ceil_div(seq_len - start, splits), kTileKeys) * kTileKeys;
  const int64_t j_begin = start + blockIdx.z * per_split;
  const int64_t j_end = min(seq_len, j_begin + per_split);
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;

  const int warp = threadIdx.x / WARP_SIZE;
  const int lane = threadIdx.x % WARP_SIZE;
  const int g = lane >> 2;
  const int tig = lane & 3;

  uint32_t qa[D / 16][4];
  {
    const T* qb = static_cast<const T*>(a.q) + b * a.q_stride.row + head0 * a.q_stride.head;
    const bool v0 = g < n_heads, v1 = g + 8 < n_heads;
    attn::load_q_frags<T, D>(qa, qb + (v0 ? g : 0) * a.q_stride.head, qb + (v1 ? g + 8 : 0) * a.q_stride.head, v0,
                             v1, tig);
  }
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  attn::RowState st;
  const float qk_scale = a.scale * attn::kLog2e;
  const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head;
  const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head;

  // Each of the 4 warps takes 16 keys of a tile.
  stream_kv_tiles<T, D>(a, table_row, j_begin, j_end, k_base, v_base, smem_raw,
                        [&](const T* k_tile, const T* v_tile, int64_t j0) {
                          const int64_t jw = j0 + warp * 16;  // this warp's first key
                          if (jw >= j_end) return;
                          float s[2][4];
#pragma unroll
                          for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                          attn::qk_tile<T, D, 2>(s, qa, k_tile + warp * 16 * kStride, lane);
                          mask_tail<2>(s, jw, j_end, tig);
                          attn::softmax_step<2, D / 8>(s, o, st, qk_scale);
                          attn::pv_tile<T, D, 2>(o, s, v_tile + warp * 16 * kStride, lane);
                        });

  // Merge the 4 warps' softmax states per query head through shared memory (the K/V ring is free now).
  float* sm_o = reinterpret_cast<float*>(smem_raw);     // [warp][row][D]
  float* sm_ml = sm_o + kWarps * kMaxRows * D;          // [warp][row][2]: m (scaled, base 2), l
  const float l0 = attn::quad_sum(st.l0), l1 = attn::quad_sum(st.l1);
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + tig * 2;
    sm_o[(warp * kMaxRows + g) * D + c] = o[n][0];
    sm_o[(warp * kMaxRows + g) * D + c + 1] = o[n][1];
    sm_o[(warp * kMaxRows + g + 8) * D + c] = o[n][2];
    sm_o[(warp * kMaxRows + g + 8) * D + c + 1] = o[n][3];
  }
  if (tig == 0) {
    sm_ml[(warp * kMaxRows + g) * 2] = st.m0 * qk_scale;
    sm_ml[(warp * kMaxRows + g) * 2 + 1] = l0;
    sm_ml[(warp * kMaxRows + g + 8) * 2] = st.m1 * qk_scale;
    sm_ml[(warp * kMaxRows + g + 8) * 2 + 1] = l1;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < n_heads * D; idx += kMmaThreads) {
    const int r = idx / D;
    const int d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (sm_ml[(w * kMaxRows + r) * 2 + 1] > 0.0f) mx = fmaxf(mx, sm_ml[(w * kMaxRows + r) * 2]);
    }
    float total_l = 0.0f, total_o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float l = sm_ml[(w * kMaxRows + r) * 2 + 1];
      if (l > 0.0f) {
        const float wgt = exp2f(sm_ml[(w * kMaxRows + r) * 2] - mx);
        total_l += l * wgt;
        total_o += sm_o[(w * kMaxRows + r) * D + d] * wgt;
      }
    }
    const float out = total_l > 0.0f ? total_o / total_l : 0.0f;  // an empty context gives zeros, as the reference
    const int64_t head = head0 + r;
    if (direct) {
      static_cast<T*>(a.out)[b * a.out_stride.row + head * a.out_stride.head + d] = from_float<T>(out);
    } else {
      const int64_t part = part_index(a, b, head, parts, blockIdx.z);
      ws_out[part * D + d] = out;
      if (d == 0) ws_lse[part] = total_l > 0.0f ? mx + log2f(total_l) : -FLT_MAX;
    }
  }
  if (!direct && merge_counters != nullptr) {
    // A row in a cascade group also merges its group's shared-prefix partials (written by the shared kernel,
    // which completed before this kernel's pdl_wait returned).
    const MergeParts mp{splits, num_splits, shared_row ? parts - num_splits : 0};
    merge_if_last<T, D>(a, b, head0, n_heads, mp, parts, ws_out, ws_lse, merge_counters + b * gridDim.x + blockIdx.x,
                        smem_raw);
  }
}

// The shared keys of a cascade group, attended once for all its rows. grid = (shared split, KV head x row chunk,
// group). The block's query rows are (request, head) pairs of the group, 16 per warp (4 requests x 4 heads for a
// GQA-4 model), so one K/V tile feeds up to 64 rows of mma instead of one request's few heads. Each warp sees
// every key of a tile and owns its rows' softmax, so no cross-warp merge is needed; the partial goes to the
// workspace as the part num_splits + split of each row.
// kWgmma (sm_90a only; launched where has_sm90a_code says the binary holds it): both products on warpgroup mma.
// The block's 64 rows are then one wgmma M tile, so each K/V tile is read from shared memory once per product for
// all of them (the mma.sync warps each re-read it through ldmatrix for their own 16 rows), at Hopper's
// tensor-core rate. Per tile: S, wait, softmax, P V, wait; the SM's other block fills the tensor cores meanwhile.
template <typename T, int D, bool kWgmma>
__global__ void __launch_bounds__(kMmaThreads, 2)
    decode_shared_kernel(AttentionArgs a, CascadeArgs c, int num_splits, int parts, int row_chunks, float* ws_out,
                         float* ws_lse) {
#if !defined(LITE_SRT_SM90A)
  if constexpr (kWgmma) return;  // no wgmma here: never launched (has_sm90a_code)
#endif
  extern __shared__ __align__(16) unsigned char smem_raw[];
  pdl_wait();
  pdl_launch_dependents();
  const int64_t grp = blockIdx.z;
  const int64_t size = c.group_size[grp];
  const int64_t gh = a.q_heads / a.kv_heads;
  const int64_t row0 = (blockIdx.y % row_chunks) * kGroupRows;
  if (row0 >= size * gh) return;  // the whole block leaves together: no barrier is skipped by part of it
  const int64_t kvh = blockIdx.y / row_chunks;
  const int64_t b0 = c.group_start[grp];
  const int64_t shared = min(c.shared_lens[b0], a.seq_lens[b0]);
  const int64_t grid_splits = gridDim.x;
  const int splits = static_cast<int>(
      c.split_count.ptr != nullptr ? max(static_cast<int64_t>(1), min(grid_splits, c.split_count[0])) : grid_splits);
  const int n_rows = static_cast<int>(size * gh);
  if (static_cast<int>(blockIdx.x) >= splits) {  // past this step's count: an empty partial (weight 0, o unread)
    const int p = num_splits + static_cast<int>(blockIdx.x);
    const int r_end = static_cast<int>(min(static_cast<int64_t>(n_rows), row0 + kGroupRows));
    for (int r = static_cast<int>(row0) + threadIdx.x; r < r_end; r += blockDim.x) {
      ws_lse[part_index(a, b0 + r / gh, kvh * gh + r % gh, parts, p)] = -FLT_MAX;
    }
    return;
  }
  const int64_t per_split = ceil_div(ceil_div(shared, splits), kTileKeys) * kTileKeys;
  const int64_t j_begin = min(shared, blockIdx.x * per_split);
  const int64_t j_end = min(shared, j_begin + per_split);
  const int64_t table_row = a.req_pool_indices[b0] * a.req_to_token_stride;

  const int warp = threadIdx.x / WARP_SIZE;
  const int lane = threadIdx.x % WARP_SIZE;
  const int g = lane >> 2;
  const int tig = lane & 3;
  // This lane's two rows (g, g + 8 of the warp's 16) as (request, head); rows past the group are zeros.
  const int r0 = static_cast<int>(row0) + warp * 16 + g;  // and r0 + 8
  uint32_t qa[D / 16][4];
  {
    const T* q = static_cast<const T*>(a.q);
    const bool v0 = r0 < n_rows, v1 = r0 + 8 < n_rows;
    const int64_t q0 = v0 ? (b0 + r0 / gh) * a.q_stride.row + (kvh * gh + r0 % gh) * a.q_stride.head : 0;
    const int64_t q1 = v1 ? (b0 + (r0 + 8) / gh) * a.q_stride.row + (kvh * gh + (r0 + 8) % gh) * a.q_stride.head : 0;
    attn::load_q_frags<T, D>(qa, q + q0, q + q1, v0, v1, tig);
  }
  // The wgmma accumulators [D / 64][8][4] hold the same (row, column) per register as mma.sync's [D / 8][4].
  float o_wg[D / 64][8][4];
  attn::zero_rows(o_wg);
  float(&o)[D / 8][4] = *reinterpret_cast<float(*)[D / 8][4]>(&o_wg[0][0][0]);
  attn::RowState st;
  const float qk_scale = a.scale * attn::kLog2e;
  const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head;
  const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head;

  if constexpr (kWgmma) {
    stream_kv_tiles<T, D, true>(a, table_row, j_begin, j_end, k_base, v_base, smem_raw,
                                [&](const T* k_tile, const T* v_tile, int64_t j0) {
                                  float s[kTileKeys / 8][4];
                                  attn::issue_qk<T, D, kTileKeys>(s, qa, attn::smem_u32(k_tile));
                                  attn::wgmma_wait<0>();
                                  attn::fence_regs(s);
                                  mask_tail<kTileKeys / 8>(s, j0, j_end, tig);
                                  float alpha0, alpha1;
                                  attn::softmax_probs<kTileKeys / 8>(s, st, qk_scale, alpha0, alpha1);
#pragma unroll
                                  for (int cb = 0; cb < D / 64; ++cb) {
                                    attn::fence_regs(o_wg[cb]);
                                    attn::rescale_rows<8>(o_wg[cb], alpha0, alpha1);
                                  }
                                  uint32_t pa[kTileKeys / 16][4];
                                  attn::pack_p<T, kTileKeys>(pa, s);
                                  attn::issue_pv<T, D, kTileKeys>(o_wg, pa, attn::smem_u32(v_tile));
                                  attn::wgmma_wait<0>();
#pragma unroll
                                  for (int cb = 0; cb < D / 64; ++cb) attn::fence_regs(o_wg[cb]);
                                });
  } else {
    stream_kv_tiles<T, D>(a, table_row, j_begin, j_end, k_base, v_base, smem_raw,
                          [&](const T* k_tile, const T* v_tile, int64_t j0) {
                            float s[kTileKeys / 8][4];
#pragma unroll
                            for (int n = 0; n < kTileKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                            attn::qk_tile<T, D, kTileKeys / 8>(s, qa, k_tile, lane);
                            mask_tail<kTileKeys / 8>(s, j0, j_end, tig);
                            attn::softmax_step<kTileKeys / 8, D / 8>(s, o, st, qk_scale);
                            attn::pv_tile<T, D, kTileKeys / 8>(o, s, v_tile, lane);
                          });
  }

  const float l0 = attn::quad_sum(st.l0), l1 = attn::quad_sum(st.l1);
  const int p = num_splits + static_cast<int>(blockIdx.x);
  // Rows g (accumulators 0, 1) and g + 8 (accumulators 2, 3) of the warp.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = r0 + half * 8;
    if (r >= n_rows) continue;
    const float l = half == 0 ? l0 : l1;
    const float m = half == 0 ? st.m0 : st.m1;
    const int64_t part = part_index(a, b0 + r / gh, kvh * gh + r % gh, parts, p);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      ws_out[part * D + n * 8 + tig * 2] = o[n][half * 2] * inv;
      ws_out[part * D + n * 8 + tig * 2 + 1] = o[n][half * 2 + 1] * inv;
    }
    if (tig == 0) ws_lse[part] = l > 0.0f ? m * qk_scale + log2f(l) : -FLT_MAX;
  }
}
#endif  // !USE_ROCM


// out = sum_p o_p * 2^(lse_p - lse) over a (request, head)'s partials: its key splits, then, for a row in a
// cascade group, its group's shared-prefix splits. One block per (request, head), one thread per element of the
// head; the weights are computed once into shared memory (an empty partial has lse -FLT_MAX and weight 0).
template <typename T>
__global__ void merge_splits_kernel(AttentionArgs a, IndexArray shared_lens, int num_splits, SplitRule rule,
                                    int parts, const float* ws_out, const float* ws_lse) {
  __shared__ float wgt[kMaxParts];
  __shared__ float inv_den;
  pdl_wait();
  pdl_launch_dependents();
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / a.q_heads;
  const int64_t head = bh % a.q_heads;
  const int64_t seq_len = a.seq_lens[b];
  const bool shared_row = parts > num_splits && shared_lens[b] > 0;
  const int splits = request_splits(seq_len - (shared_row ? min(shared_lens[b], seq_len) : 0), num_splits, rule);
  if (splits == 1 && !shared_row) return;  // the decode kernel wrote this row directly
  const MergeParts mp{splits, num_splits, shared_row ? parts - num_splits : 0};
  const int used = mp.count();
  const float* lse = ws_lse + bh * parts;
  for (int p = threadIdx.x; p < used; p += blockDim.x) wgt[p] = lse[mp.part(p)];
  __syncthreads();
  float mx = -FLT_MAX;
  for (int p = 0; p < used; ++p) mx = fmaxf(mx, wgt[p]);
  __syncthreads();  // everyone has read the raw lse values
  for (int p = threadIdx.x; p < used; p += blockDim.x) wgt[p] = wgt[p] == -FLT_MAX ? 0.0f : exp2f(wgt[p] - mx);
  __syncthreads();
  if (threadIdx.x == 0) {
    float den = 0.0f;
    for (int p = 0; p < used; ++p) den += wgt[p];
    inv_den = den > 0.0f ? 1.0f / den : 0.0f;
  }
  __syncthreads();
  const float* o = ws_out + bh * parts * a.head_dim;
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float num = 0.0f;
#pragma unroll 4
    for (int p = 0; p < used; ++p) {
      if (wgt[p] != 0.0f) num += wgt[p] * o[mp.part(p) * a.head_dim + d];  // an empty partial's o may be unwritten
    }
    static_cast<T*>(a.out)[b * a.out_stride.row + head * a.out_stride.head + d] = from_float<T>(num * inv_den);
  }
}

// A/B and tuning knobs read at each launch plan (scripts/bench_decode_splits.py sweeps them).
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

int gmax_for(int64_t group) { return group >= 8 ? 8 : group >= 4 ? 4 : group >= 2 ? 2 : 1; }

// How a launch is cut: which kernel, how many head chunks per KV head, how many key splits per request, and, for
// a cascade, how many splits of the shared keys and row chunks per group.
struct DecodePlan {
  bool mma;
  int chunks;
  int splits;       // the grid's key splits
  SplitRule rule;   // how many of them each request uses
  int shared_splits = 0;  // 0: no cascade
  int row_chunks = 0;
  int parts() const { return splits + shared_splits; }
};

// The tensor-core kernel's key splits for `batch` requests of `blocks_per_req` block columns (KV heads x head
// chunks). base: about one wave of blocks, rounded down (every extra split writes float32 partials that are read
// back, which at 8-64 requests x 1-2k keys costs more than the parallelism gains; H200: 14-24% faster than two
// blocks per SM, docs/BENCHMARKS.md). With the step's key counts (bal.max_keys > 0) a request also takes one
// split per `chunk` keys, chunk = 1 / kBalanceDiv of the keys each resident block would stream if the step's keys
// were spread evenly, at least split_floor(...): the grid grows to fit the longest request, up to kBalanceWaves
// waves of blocks. LITE_SRT_DECODE_MIN_KEYS (a fixed floor) / _BALANCE_DIV / _BALANCE_WAVES override the three
// for A/B runs.
//
// The floor is the keys each SM would stream, so a split is never much shorter than an even share of the step
// (every split costs a prologue and a partial to merge). Without a step total (a captured graph's grid, sized for
// the longest context) it is kMinSplitKeys: the kernel clamps a step's finer splits to that grid.
int64_t split_floor(int64_t blocks_per_req, int64_t total_keys, int64_t sms) {
  if (const char* env = std::getenv("LITE_SRT_DECODE_MIN_KEYS")) return std::atoi(env);
  if (total_keys <= 0) return kMinSplitKeys;
  return std::clamp<int64_t>(ceil_div(total_keys * blocks_per_req, sms), kMinSplitKeysShort, kMinSplitKeys);
}

DecodeSplitPlan balanced_splits(int64_t blocks_per_req, int64_t batch, const DecodeBalance& bal) {
  const int64_t sms = current_num_sms();
  const int64_t blocks = std::max<int64_t>(1, batch * blocks_per_req);
  const int64_t base = std::clamp<int64_t>(sms * 11 / 10 / blocks, 1, kMaxSplits);
  const int64_t min_keys = split_floor(blocks_per_req, bal.total_keys, sms);
  DecodeSplitPlan p{base, std::max<int64_t>(min_keys, 1), base};
  // LITE_SRT_DECODE_BALANCE=0: the one-wave plan only (A/B runs).
  if (bal.max_keys <= 0 || min_keys <= 0 || env_int("LITE_SRT_DECODE_BALANCE", 1) == 0) return p;
  const int64_t div = std::max(1, env_int("LITE_SRT_DECODE_BALANCE_DIV", kBalanceDiv));
  p.chunk = std::max(min_keys, ceil_div(std::max<int64_t>(bal.total_keys, 0) * blocks_per_req, 2 * sms * div));
  const int64_t waves = std::max(1, env_int("LITE_SRT_DECODE_BALANCE_WAVES", kBalanceWaves));
  const int64_t cap = std::max(base, sms * 11 / 10 * waves / blocks);
  p.splits = std::min<int64_t>(std::clamp(ceil_div(bal.max_keys, p.chunk), base, cap), kMaxSplits);
  return p;
}

// Key splits spread small batches over the GPU: balanced_splits for the tensor-core kernel, about eight resident
// blocks per SM for the SIMT one. The context length lives on the device, so each request divides its own keys
// over its count of the grid's splits (empty splits cost one early exit). A cascade splits the shared keys to
// about two resident blocks per SM, keeping at least two tiles per split.
DecodePlan plan_decode(const AttentionArgs& a, const CascadeArgs* c, const DecodeBalance& bal) {
  const int64_t group = a.q_heads / a.kv_heads;
#if !defined(USE_ROCM)
  const bool mma = a.dtype != DType::kFloat32;
#else
  const bool mma = false;
#endif
  const int64_t chunks = mma ? ceil_div(group, 16) : ceil_div(group, gmax_for(group));
  int64_t grid;
  SplitRule rule;
  if (mma) {
    const DecodeSplitPlan sp = balanced_splits(a.kv_heads * chunks, a.batch, bal);
    grid = sp.splits;
    rule = SplitRule{static_cast<int>(sp.base), static_cast<int>(sp.chunk),
                     sp.splits > sp.base ? bal.chunk_keys : IndexArray{nullptr, true}};
  } else {
    const int64_t blocks = std::max<int64_t>(1, a.batch * a.kv_heads * chunks);
    grid = ceil_div(static_cast<int64_t>(current_num_sms()) * 8, blocks);
  }
  // LITE_SRT_DECODE_SPLITS=<n> forces the key splits per request (A/B runs: scripts/bench_decode_splits.py).
  if (const char* env = std::getenv("LITE_SRT_DECODE_SPLITS")) {
    grid = std::max(1, std::atoi(env));
    rule = SplitRule{};
  }
  const int splits = static_cast<int>(std::clamp<int64_t>(grid, 1, kMaxSplits));
  DecodePlan plan{mma, static_cast<int>(chunks), splits, rule};
#if !defined(USE_ROCM)
  if (mma && c != nullptr && c->num_groups > 0 && c->max_shared > 0) {
    plan.row_chunks = static_cast<int>(ceil_div(std::max<int64_t>(c->max_group, 1) * group, kGroupRows));
    plan.shared_splits = c->shared_splits > 0 ? static_cast<int>(std::min<int64_t>(c->shared_splits, kMaxSharedSplits))
                                              : decode_cascade_splits(a.q_heads, a.kv_heads, c->num_groups,
                                                                      c->max_group, c->max_shared);
  }
#endif
  return plan;
}

template <typename T, int D, int GMAX>
void launch_simt(const AttentionArgs& a, int splits, float* ws_out, float* ws_lse, cudaStream_t stream) {
  const int64_t group = a.q_heads / a.kv_heads;
  const dim3 grid(splits, static_cast<unsigned>(a.kv_heads * ceil_div(group, GMAX)), static_cast<unsigned>(a.batch));
  launch_kernel(decode_simt_kernel<T, D, GMAX>, grid, kThreads, 0, stream, a, splits, ws_out, ws_lse);
}

template <typename T, int D>
void launch_simt_gmax(const AttentionArgs& a, int splits, float* ws_out, float* ws_lse, cudaStream_t stream) {
  switch (gmax_for(a.q_heads / a.kv_heads)) {
    case 8:
      launch_simt<T, D, 8>(a, splits, ws_out, ws_lse, stream);
      break;
    case 4:
      launch_simt<T, D, 4>(a, splits, ws_out, ws_lse, stream);
      break;
    case 2:
      launch_simt<T, D, 2>(a, splits, ws_out, ws_lse, stream);
      break;
    default:
      launch_simt<T, D, 1>(a, splits, ws_out, ws_lse, stream);
  }
}

#if !defined(USE_ROCM)
// The cascade's shared pass runs on wgmma where the binary holds its sm_90a code (Hopper).
// LITE_SRT_CASCADE_KERNEL=mma forces the mma.sync kernel (A/B runs, tests); read at every launch plan.
template <typename T, int D>
bool shared_pass_on_wgmma() {
  const char* v = std::getenv("LITE_SRT_CASCADE_KERNEL");
  if (v != nullptr && std::strcmp(v, "mma") == 0) return false;
  return has_sm90a_code<decode_shared_kernel<T, D, true>>();
}

template <typename T, int D, bool kWgmma>
void launch_shared(const AttentionArgs& a, const CascadeArgs& c, const DecodePlan& plan, float* ws_out,
                   float* ws_lse, cudaStream_t stream) {
  constexpr size_t smem = kWgmma ? decode_sw128_smem_bytes<T, D>() : decode_smem_bytes<T, D>();
  set_smem_opt_in<decode_shared_kernel<T, D, kWgmma>>(smem);
  const dim3 grid(plan.shared_splits, static_cast<unsigned>(a.kv_heads * plan.row_chunks),
                  static_cast<unsigned>(c.num_groups));
  launch_kernel(decode_shared_kernel<T, D, kWgmma>, grid, kMmaThreads, smem, stream, a, c, plan.splits, plan.parts(),
                plan.row_chunks, ws_out, ws_lse);
}

// The tensor-core kernels of a step: the cascade's shared pass (if any), then every row's own keys. With
// merge_counters (non-null) the last split of each (request, head chunk) merges its rows in the kernel.
template <typename T, int D>
void launch_mma(const AttentionArgs& a, const CascadeArgs* c, const DecodePlan& plan, float* ws_out, float* ws_lse,
                int* merge_counters, cudaStream_t stream) {
  constexpr size_t smem = decode_smem_bytes<T, D>();
  IndexArray shared_lens{nullptr, false};
  if (plan.shared_splits > 0) {
    shared_lens = c->shared_lens;
    if (shared_pass_on_wgmma<T, D>()) {
      launch_shared<T, D, true>(a, *c, plan, ws_out, ws_lse, stream);
    } else {
      launch_shared<T, D, false>(a, *c, plan, ws_out, ws_lse, stream);
    }
  }
  // Splits vary slowest, so the blocks of split 0 (every request's first, the only one of a short request) are
  // dispatched first and a request's unused splits, which leave at once, take SM slots only after them.
  const dim3 grid(static_cast<unsigned>(a.kv_heads * plan.chunks), static_cast<unsigned>(a.batch), plan.splits);
  set_smem_opt_in<decode_mma_kernel<T, D>>(smem);
  launch_kernel(decode_mma_kernel<T, D>, grid, kMmaThreads, smem, stream, a, shared_lens, plan.splits, plan.rule,
                plan.parts(), plan.chunks, ws_out, ws_lse, merge_counters);
}
#endif

template <typename T, int D>
void launch_typed(const AttentionArgs& a, const CascadeArgs* c, const DecodePlan& plan, float* ws_out,
                  float* ws_lse, const MergeCounters& counters, cudaStream_t stream) {
  IndexArray shared_lens{nullptr, false};
  if (c != nullptr && plan.shared_splits > 0) shared_lens = c->shared_lens;
#if !defined(USE_ROCM)
  if constexpr (sizeof(T) == 2) {
    if (plan.mma) {
      // Counters for every (request, KV head x chunk) block column, or the separate merge kernel below.
      const bool fused = plan.parts() > 1 && counters.ptr != nullptr &&
                         a.batch * a.kv_heads * plan.chunks <= counters.len;
      int* ctr = fused ? counters.ptr : nullptr;
      launch_mma<T, D>(a, c, plan, ws_out, ws_lse, ctr, stream);
      if (fused) return;
    } else {
      launch_simt_gmax<T, D>(a, plan.splits, ws_out, ws_lse, stream);
    }
  } else {
    launch_simt_gmax<T, D>(a, plan.splits, ws_out, ws_lse, stream);
  }
#else
  launch_simt_gmax<T, D>(a, plan.splits, ws_out, ws_lse, stream);
#endif
  if (plan.parts() > 1) {
    launch_kernel(merge_splits_kernel<T>, static_cast<unsigned>(a.batch * a.q_heads), D, 0, stream, a, shared_lens,
                  plan.splits, plan.rule, plan.parts(), ws_out, ws_lse);
  }
}

}  // namespace

// About one wave of shared-pass blocks (two resident per SM), rounded down like the key splits, at least two tiles
// per split. H200, 2k-key prefixes (docs/BENCHMARKS.md): 1 split is best at 32 groups, 2 at 16, 4-8 at 2-4.
int decode_cascade_splits(int64_t q_heads, int64_t kv_heads, int64_t num_groups, int64_t max_group,
                          int64_t max_shared) {
  if (num_groups <= 0 || max_shared <= 0 || kv_heads <= 0) return 1;
  const int64_t row_chunks = ceil_div(std::max<int64_t>(max_group, 1) * (q_heads / kv_heads), kGroupRows);
  const int64_t shared_blocks = num_groups * kv_heads * row_chunks;
  const int64_t want = static_cast<int64_t>(current_num_sms()) * 2 / shared_blocks;
  const int64_t by_len = std::max<int64_t>(1, max_shared / (2 * kTileKeys));
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::min<int64_t>(kMaxSharedSplits, by_len)));
}

std::string decode_cascade_shared_kernel(DType dtype, int64_t head_dim) {
  std::string kernel = "none";
#if !defined(USE_ROCM)
  dispatch_cuda_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (sizeof(T) == 2) {
      const bool wg = head_dim == 64 ? shared_pass_on_wgmma<T, 64>() : shared_pass_on_wgmma<T, 128>();
      kernel = wg ? "wgmma" : "mma";
    }
  });
#endif
  return kernel;
}

DecodeSplitPlan decode_split_plan(int64_t q_heads, int64_t kv_heads, int64_t batch, int64_t total_keys,
                                  int64_t max_keys) {
  if (kv_heads <= 0 || q_heads % kv_heads != 0) throw std::invalid_argument("decode_split_plan: bad head counts");
  // The tensor-core kernel's block columns: 16 query heads (kMaxRows) per KV head chunk.
  const int64_t blocks_per_req = kv_heads * ceil_div(q_heads / kv_heads, 16);
  return balanced_splits(blocks_per_req, batch, {total_keys, max_keys, {nullptr, true}});
}

int64_t decode_attention_workspace_bytes(const AttentionArgs& a, const CascadeArgs* cascade, const DecodeBalance& bal) {
  const DecodePlan plan = plan_decode(a, cascade, bal);
  if (plan.parts() == 1) return 0;
  return a.batch * a.q_heads * plan.parts() * (a.head_dim + 1) * static_cast<int64_t>(sizeof(float));
}

void launch_decode_attention(const AttentionArgs& a, const CascadeArgs* cascade, void* workspace,
                             const MergeCounters& counters, cudaStream_t stream, const DecodeBalance& bal) {
  if (a.batch == 0) return;
  const DecodePlan plan = plan_decode(a, cascade, bal);
  float* ws_out = static_cast<float*>(workspace);
  float* ws_lse = ws_out + a.batch * a.q_heads * plan.parts() * a.head_dim;
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (a.head_dim == 64) {
      launch_typed<T, 64>(a, cascade, plan, ws_out, ws_lse, counters, stream);
    } else {
      launch_typed<T, 128>(a, cascade, plan, ws_out, ws_lse, counters, stream);
    }
  });
  check_launch("decode_attention");
}

}  // namespace lite_srt
