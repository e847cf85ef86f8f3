// The batch-1 decode step of a Llama-architecture model (bf16) in one persistent kernel, on Hopper.
//
// At batch 1 a decode step is a ~15 GB weight stream (Llama-3.1-8B) with a little arithmetic, and the bar is the
// HBM read rate. As ~200 separate kernels the step loses a few microseconds at every boundary, and the GEMVs
// cannot read ahead across the latency-bound pieces between them (norms, RoPE, attention). Here one block per SM
// runs the whole step (scripts/cuda/stream_chain.cu measured the linear chain alone at 98% of a read kernel):
//
//  - A producer lane streams weight units through a ring of 16 KB shared-memory slots with cp.async.bulk. It
//    takes units from a per-phase counter (faster blocks take more) and never waits for activations, only for a
//    free slot, so it reads the next phase's weights while the consumers wait on a phase barrier or attention.
//  - Six consumer warps take the slots in turn (slot j -> warp j % 6). A warp copies its slot into registers and
//    frees it before the dot products, so the refill overlaps the math.
//  - Phases per layer: qkv (input RMSNorm fused into its input load), attention, merge, o (+ residual), gate_up
//    (post-attention RMSNorm fused in; the epilogue writes silu(gate) * up), down (half rows added into fp32
//    accumulators); then the final norm and the LM head (logits in fp32, rounded through bf16 as the unfused
//    path's bf16 GEMV output is).
//  - Phase barrier: at each phase the producer sends every consumer warp a marker slot carrying how many units
//    of the previous phase it took. At the marker the block adds that count plus one to the previous phase's
//    `done` counter and waits for (units + blocks): every unit is finished and every block has also loaded its
//    input for that phase, so buffers can be reused in place.
//  - Attention units are (KV head, key range) pairs, one per block where the KV heads allow, of up to 4 slots
//    of 32 keys. The whole producer warp gathers each slot's K and V rows (16-byte cp.async through the
//    request's token table, rotated for conflict-free ldmatrix: rot_off). The consumer warp that receives a
//    unit's first slot hands the unit to the block's attention warp through a shared-memory mailbox. That warp
//    runs the unit on the tensor cores (mma.sync: the query heads sharing the KV head are the rows, the online
//    softmax stays in the accumulator layout), writes the new key's rotated k and its v to the cache, and
//    counts each finished unit into the phase barrier itself. (As scalar code the unit's math cost 0.55 ms per
//    step at 1k keys on an H100; on the tensor cores 0.03.) Units write partials (unnormalized o, max, sum);
//    the merge phase's units (one per query head, also on the attention warps) combine them. As one
//    last-finisher merge per KV head the merge cost 0.58 ms per step, as a phase 0.11 (H100, 1k keys). With
//    attention in its own warp, the weight units' registers do not add to its (in one loop they spilled, and the
//    weight math cost 1.2 ms more per step). A second attention warp would cost every warp registers: nine
//    warps allocate as twelve, 168 registers each.
//
// Numerics follow the unfused path: activations are rounded to bf16 where its kernels store bf16 (norm
// outputs, linear outputs, silu * up, the residual stream, rotated q/k), sums are fp32.
#include "decode_step.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "../attention/attn_wgmma.cuh"

#if defined(__CUDACC__) && !defined(USE_ROCM)
// Below sm_90a the kernel body compiles to nothing (LITE_SRT_SM90A), which leaves its helpers unreferenced.
#pragma nv_diag_suppress 177
#endif

namespace lite_srt {

namespace {

constexpr int kStages = 12;        // ring slots (a multiple of the consumer warps)
constexpr int kSlotBytes = 16384;  // one slot: two rows of K = 4096, a gate row with its up row, half a down row
constexpr int kCW = 6;             // consumer warps (weight units); then the producer warp, then the attention warps
constexpr int kAttnWarps = 1;  // a ninth warp would cut every warp to 168 registers (allocation granularity)
constexpr int kProducerWarp = kCW, kAttnWarp = kCW + 1;
constexpr int kThreads = (kCW + 1 + kAttnWarps) * 32;
constexpr int kVec = kSlotBytes / 512;  // 16-byte vectors per lane in a full slot
constexpr int kPhasesPerLayer = 6;

enum Kind : int { kQkv = 0, kAttn = 1, kMerge = 2, kO = 3, kGateUp = 4, kDown = 5, kLmHead = 6 };

// Pieces of a down row in 16 KB slots (each added into the fp32 accumulator on its own).
__host__ __device__ constexpr int down_pieces(int inter) { return (inter * 2 + kSlotBytes - 1) / kSlotBytes; }

__host__ __device__ constexpr size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// Byte offsets of the workspace buffers (host and device agree through this one function).
struct Layout {
  size_t qkv, attn, mid, gu, acc, part_o, part_ml, total;
  __host__ __device__ Layout(int layers, int hidden, int inter, int hq, int hkv) {
    const size_t nqkv = static_cast<size_t>(hq + 2 * hkv) * kFusedHeadDim, g = hq / hkv;
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t here = at;
      at += align256(bytes);
      return here;
    };
    qkv = take(layers * nqkv * 2);
    attn = take(static_cast<size_t>(layers) * hq * kFusedHeadDim * 2);
    mid = take(static_cast<size_t>(layers) * hidden * 2);
    gu = take(static_cast<size_t>(layers) * inter * 2);
    acc = take(static_cast<size_t>(layers) * hidden * 4);
    part_o = take(static_cast<size_t>(hkv) * kFusedMaxSplits * g * kFusedHeadDim * 4);
    part_ml = take(static_cast<size_t>(hkv) * kFusedMaxSplits * g * 2 * 4);
    total = at;
  }
};

size_t smem_bytes(int hidden, int inter, int hq) {
  const int max_k = std::max(std::max(hidden, inter), hq * kFusedHeadDim);
  // ring | input vector (bf16) | 32 floats | full and empty barriers | slot metadata | attention mailbox | mail
  // head, the block's argmax key
  return static_cast<size_t>(kStages) * kSlotBytes + align256(static_cast<size_t>(max_k) * 2) + 128 +
         2 * kStages * 8 + kStages * 16 + kStages * 16 + 16 + 8;
}

}  // namespace

const char* fused_decode_unsupported(int hidden, int inter, int hq, int hkv, int head_dim) {
  if (head_dim != kFusedHeadDim) return "head_dim is not 128";
  if (hq < 1 || hkv < 1 || hq % hkv != 0) return "the query heads are not a multiple of the KV heads";
  if (hq / hkv > kFusedMaxGroup) return "more than 4 query heads share a KV head";
  if (hidden % 256 != 0 || hidden > 4096) return "hidden_size is not a multiple of 256 up to 4096";
  if ((hq * kFusedHeadDim) % 256 != 0 || hq * kFusedHeadDim > 4096)
    return "the attention output is not a multiple of 256 up to 4096";
  const int pieces = down_pieces(inter);
  if (inter < 256 || inter % pieces != 0 || (inter / pieces) % 256 != 0)
    return "intermediate_size does not split into 16 KB pieces of a multiple of 256";
  if (smem_bytes(hidden, inter, hq) > 227 * 1024) return "intermediate_size is too large for shared memory";
  return nullptr;
}

size_t fused_decode_workspace_bytes(int num_layers, int hidden, int inter, int hq, int hkv) {
  return Layout(num_layers, hidden, inter, hq, hkv).total;
}

size_t fused_decode_counters(int num_layers) {
  const int nphase = kPhasesPerLayer * num_layers + 1;
  return 2 * static_cast<size_t>(nphase) + 4;  // per phase: units taken, units done; the argmax (64 bits), arrivals
}

#if !defined(USE_ROCM)
namespace {

using bf16 = __nv_bfloat16;
using attn::mbar_arrive;
using attn::mbar_init;
using attn::mbar_init_fence;
using attn::mbar_wait;
using attn::smem_u32;
constexpr int D = kFusedHeadDim;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(LITE_SRT_SM90A)
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
#endif
}

// Global -> shared bulk copy completing on `bar`, with an L2 policy (weights are read once: evict first).
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar, uint64_t policy) {
#if defined(LITE_SRT_SM90A)
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(
          smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(policy)
      : "memory");
#endif
}

__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy = 0;
#if defined(LITE_SRT_SM90A)
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
#endif
  return policy;
}

__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kCW * 32) : "memory"); }

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

__device__ __forceinline__ void unpack8(uint4 v, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  uint4 v;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return v;
}

__device__ __forceinline__ float dot8(uint4 w, const float (&x)[8]) {
  float f[8];
  unpack8(w, f);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) s = fmaf(f[i], x[i], s);
  return s;
}

__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }

struct SlotMeta {
  int phase;
  int unit;   // < 0: a phase marker
  int count;  // marker: units of phase - 1 this block took
  int part;   // an attention unit's slots: 0, 1, ... (the first is handed over; the attention warp waits for the rest)
};

// An attention unit handed from the consumer warp that received its first slot to the block's attention warp.
// Entry n of the stream sits at n % kStages; `seq` = n + 1 marks it written. At most kStages are outstanding
// (each holds a ring slot), so an entry is never overwritten before it is read.
struct Mail {
  int phase, unit;
  unsigned at;  // the unit's first slot's place in the ring's stream (slot at % kStages, lap at / kStages)
  volatile int seq;
};

__device__ __forceinline__ void post(Mail* mail, unsigned* head, int phase, int unit, unsigned at) {
  const unsigned n = atomicAdd(head, 1u);  // shared-memory atomic: the entry's place in the stream
  Mail* m = mail + n % kStages;
  m->phase = phase;
  m->unit = unit;
  m->at = at;
  __threadfence_block();
  m->seq = static_cast<int>(n + 1);
}

// What the kernel derives from the arguments once.
struct Step {
  const FusedDecodeArgs& a;  // the kernel's __grid_constant__ parameter (read in place, never copied)
  int nqkv, qd, group, pieces, piece_elems, nphase;  // group: query heads per KV head
  int splits, unit_slots;  // attention units per KV head, ring slots (of kFusedSlotKeys keys) per unit
  bf16 *qkv, *attn, *mid, *gu;
  float *acc, *part_o, *part_ml;
  unsigned *ctr, *done;

  __device__ explicit Step(const FusedDecodeArgs& args) : a(args) {
    nqkv = (a.hq + 2 * a.hkv) * D;
    qd = a.hq * D;
    group = a.hq / a.hkv;
    pieces = down_pieces(a.inter);
    piece_elems = a.inter / pieces;
    nphase = kPhasesPerLayer * a.num_layers + 1;
    const Layout lay(a.num_layers, a.hidden, a.inter, a.hq, a.hkv);
    unsigned char* ws = static_cast<unsigned char*>(a.workspace);
    qkv = reinterpret_cast<bf16*>(ws + lay.qkv);
    attn = reinterpret_cast<bf16*>(ws + lay.attn);
    mid = reinterpret_cast<bf16*>(ws + lay.mid);
    gu = reinterpret_cast<bf16*>(ws + lay.gu);
    acc = reinterpret_cast<float*>(ws + lay.acc);
    part_o = reinterpret_cast<float*>(ws + lay.part_o);
    part_ml = reinterpret_cast<float*>(ws + lay.part_ml);
    ctr = a.counters;
    done = ctr + nphase;
    // Attention geometry: one unit per block where the KV heads allow (a unit's latency is mostly its q loads
    // and partial stores, so one longer unit beats several short ones back to back on the attention warp),
    // units of at most a.unit_slots slots.
    const int64_t keys = a.seq_lens[0];
    const int chunks = static_cast<int>(keys < 1 ? 1 : (keys + kFusedSlotKeys - 1) / kFusedSlotKeys);  // <= 64 (host)
    const int most = min(max(a.unit_slots, 1), kFusedUnitSlots);
    const int want = min(chunks, max(static_cast<int>(gridDim.x) / a.hkv, (chunks + most - 1) / most));
    unit_slots = (chunks + want - 1) / want;
    splits = (chunks + unit_slots - 1) / unit_slots;
  }

  // Phase ph: (kind, layer); the LM head is layer num_layers (its input is the residual after the last layer).
  __device__ int kind(int ph) const { return ph == nphase - 1 ? kLmHead : ph % kPhasesPerLayer; }
  __device__ int layer(int ph) const { return ph / kPhasesPerLayer; }

  // Attention unit u's first key and its number of keys (the new one included).
  __device__ int unit_key0(int u) const { return (u / a.hkv) * unit_slots * kFusedSlotKeys; }
  __device__ int unit_keys(int u) const {
    const int64_t left = a.seq_lens[0] - unit_key0(u);
    return static_cast<int>(left < unit_slots * kFusedSlotKeys ? left : unit_slots * kFusedSlotKeys);
  }

  __device__ int units(int ph) const {
    switch (kind(ph)) {
      case kQkv: return nqkv / 2;
      case kAttn: return a.hkv * splits;
      case kMerge: return a.hq;
      case kO: return a.hidden / 2;
      case kGateUp: return a.inter;
      case kDown: return a.hidden * pieces;
      default: return (a.vocab + 1) / 2;
    }
  }

  // Residual stream entering layer l (l = num_layers: after the last layer), 8 values from element i:
  // the embedding, or the previous layer's post-attention residual plus its down projection, as bf16.
  __device__ void residual8(int l, int i, float (&x)[8]) const {
    if (l == 0) {
      unpack8(__ldg(reinterpret_cast<const uint4*>(static_cast<const bf16*>(a.embed) + a.input_ids[0] * a.hidden + i)), x);
      return;
    }
    const size_t at = static_cast<size_t>(l - 1) * a.hidden + i;
    unpack8(__ldcg(reinterpret_cast<const uint4*>(mid + at)), x);
    const float4 d0 = __ldcg(reinterpret_cast<const float4*>(acc + at));
    const float4 d1 = __ldcg(reinterpret_cast<const float4*>(acc + at) + 1);
    const float d[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = round_bf16(x[e] + round_bf16(d[e]));
  }
  __device__ float residual1(int l, int i) const {
    if (l == 0) return __bfloat162float(static_cast<const bf16*>(a.embed)[a.input_ids[0] * a.hidden + i]);
    const size_t at = static_cast<size_t>(l - 1) * a.hidden + i;
    return round_bf16(__bfloat162float(__ldcg(mid + at)) + round_bf16(__ldcg(acc + at)));
  }
};

// The consumers' input vector for phase ph in shared memory (bf16): RMSNormed (with its weight) for qkv,
// gate_up and the LM head; copied for o and down; nothing for attention. Ends with a consumer barrier.
__device__ void load_input(const Step& st, int ph, bf16* xs, float* red) {
  const FusedDecodeArgs& a = st.a;
  const int kind = st.kind(ph), l = st.layer(ph), t = threadIdx.x;
  uint4* xv = reinterpret_cast<uint4*>(xs);
  if (kind == kAttn || kind == kMerge) return;
  if (kind == kO || kind == kDown) {
    const bf16* src = kind == kO ? st.attn + static_cast<size_t>(l) * st.qd : st.gu + static_cast<size_t>(l) * a.inter;
    const int nv = (kind == kO ? st.qd : a.inter) / 8;
    for (int i = t; i < nv; i += kCW * 32) xv[i] = __ldcg(reinterpret_cast<const uint4*>(src) + i);
    consumers_sync();
    return;
  }
  const int nv = a.hidden / 8;
  const void* wn = kind == kQkv ? a.layers[l].ln_in : kind == kGateUp ? a.layers[l].ln_post : a.final_norm;
  float ss = 0.f;
  for (int i = t; i < nv; i += kCW * 32) {
    float x[8];
    if (kind == kGateUp)
      unpack8(__ldcg(reinterpret_cast<const uint4*>(st.mid + static_cast<size_t>(l) * a.hidden) + i), x);
    else
      st.residual8(l, 8 * i, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) ss = fmaf(x[e], x[e], ss);
    xv[i] = pack8(x);
  }
  ss = warp_reduce_sum(ss);
  if ((t & 31) == 0) red[t >> 5] = ss;
  consumers_sync();
  float tot = 0.f;
#pragma unroll
  for (int w = 0; w < kCW; ++w) tot += red[w];
  const float inv = rsqrtf(tot / a.hidden + a.eps);
  for (int i = t; i < nv; i += kCW * 32) {
    float x[8], w[8];
    unpack8(xv[i], x);
    unpack8(__ldg(static_cast<const uint4*>(wn) + i), w);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = x[e] * inv * w[e];
    xv[i] = pack8(x);
  }
  consumers_sync();
}

// The greedy token: logits compare as (value, lowest index first) through one 64-bit key, so atomicMax picks
// what torch.argmax picks (its first maximum). The value's bits are made order-preserving as unsigned.
__device__ __forceinline__ unsigned long long argmax_key(float v, int idx) {
  unsigned b = __float_as_uint(v);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(b) << 32) | (0xFFFFFFFFu - static_cast<unsigned>(idx));
}

// After the LM head (thread 0 of each block, its warps past their units): the block's best key into the
// grid's; the last block to arrive writes the token, and into the request's row of the token table if given.
__device__ void finish_argmax(const Step& st, unsigned long long block_best) {
  const FusedDecodeArgs& a = st.a;
  unsigned long long* grid_best = reinterpret_cast<unsigned long long*>(st.ctr + 2 * st.nphase);
  unsigned* arrived = st.ctr + 2 * st.nphase + 2;
  atomicMax(grid_best, block_best);
  __threadfence();
  if (atomicAdd(arrived, 1u) != gridDim.x - 1) return;
  __threadfence();
  const unsigned long long b = atomicAdd(grid_best, 0ull);
  const int64_t token = static_cast<int64_t>(0xFFFFFFFFu - static_cast<unsigned>(b & 0xFFFFFFFFull));
  a.token[0] = token;
  if (a.token_table != nullptr) a.token_table[a.req_pool_indices[0]] = token;
}

// A weight unit's bytes: one copy (plain phases: up to two whole rows; down: a piece of a row) or two (gate_up:
// the gate row and its up row).
struct Copy {
  const bf16* src0;
  const bf16* src1;
  uint32_t bytes;  // per copy
};

__device__ Copy unit_copy(const Step& st, int kind, int l, int u) {
  const FusedDecodeArgs& a = st.a;
  const FusedLayer* L = a.layers + (l < a.num_layers ? l : 0);
  if (kind == kGateUp) {
    const bf16* w = static_cast<const bf16*>(L->w_gate_up);
    return {w + static_cast<size_t>(u) * a.hidden, w + static_cast<size_t>(a.inter + u) * a.hidden,
            static_cast<uint32_t>(a.hidden * 2)};
  }
  if (kind == kDown) {
    const bf16* w = static_cast<const bf16*>(L->w_down);
    const int row = u / st.pieces, piece = u % st.pieces;
    return {w + static_cast<size_t>(row) * a.inter + static_cast<size_t>(piece) * st.piece_elems, nullptr,
            static_cast<uint32_t>(st.piece_elems * 2)};
  }
  const bf16* w;
  int n, k;
  if (kind == kQkv) {
    w = static_cast<const bf16*>(L->w_qkv), n = st.nqkv, k = a.hidden;
  } else if (kind == kO) {
    w = static_cast<const bf16*>(L->w_o), n = a.hidden, k = st.qd;
  } else {
    w = static_cast<const bf16*>(a.lm_head), n = a.vocab, k = a.hidden;
  }
  const int row = 2 * u, rows = min(2, n - row);
  return {w + static_cast<size_t>(row) * k, nullptr, static_cast<uint32_t>(rows * k * 2)};
}

// A weight unit: the lane's share of the slot into registers, the slot back to the producer, then the dot
// products with the input vector and the phase's epilogue.
__device__ __forceinline__ void weight_unit(const Step& st, int kind, int l, int u, const unsigned char* slot,
                                            uint64_t* empty, const bf16* xs, unsigned long long* best, int lane) {
  const FusedDecodeArgs& a = st.a;
  const Copy cp = unit_copy(st, kind, l, u);
  const int total = (cp.src1 != nullptr ? 2 : 1) * static_cast<int>(cp.bytes / 16);  // vectors in the slot
  int row_vec;  // 16-byte vectors per row (or piece)
  int x_off = 0;
  if (kind == kGateUp) {
    row_vec = a.hidden / 8;
  } else if (kind == kDown) {
    row_vec = st.piece_elems / 8;
    x_off = (u % st.pieces) * row_vec;
  } else {
    row_vec = (kind == kO ? st.qd : a.hidden) / 8;
  }
  const int vpr = row_vec / 32;  // a lane's vectors per row
  const uint4* w = reinterpret_cast<const uint4*>(slot);
  uint4 wv[kVec];
#pragma unroll
  for (int v = 0; v < kVec; ++v)
    if (v * 32 < total) wv[v] = w[v * 32 + lane];
  __syncwarp();
  if (lane == 0) mbar_arrive(empty);
  if (a.skip & 16) return;
  const uint4* xv = reinterpret_cast<const uint4*>(xs) + x_off;
  float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    if (v * 32 >= total) break;
    const bool second = v >= vpr;  // the second row (plain phases) or the up row (gate_up)
    float x[8];
    unpack8(xv[(second ? v - vpr : v) * 32 + lane], x);
    const float d = dot8(wv[v], x);
    if (second)
      acc1 += d;
    else
      acc0 += d;
  }
  acc0 = warp_reduce_sum(acc0);
  acc1 = warp_reduce_sum(acc1);
  if (lane != 0) return;
  const size_t lo = static_cast<size_t>(l);
  if ((a.skip & 4) && (kind == kQkv || kind == kO)) {  // timing only: the stores without their loads
    (kind == kQkv ? st.qkv + lo * st.nqkv : st.mid + lo * a.hidden)[2 * u] = __float2bfloat16(acc0 + acc1);
    return;
  }
  switch (kind) {
    case kQkv: {
      const bf16* bias = static_cast<const bf16*>(a.layers[l].b_qkv);
      const int row = 2 * u;
      const float r[2] = {acc0, acc1};
      for (int i = 0; i < 2 && row + i < st.nqkv; ++i)
        st.qkv[lo * st.nqkv + row + i] =
            __float2bfloat16(bias != nullptr ? r[i] + __bfloat162float(bias[row + i]) : r[i]);
      break;
    }
    case kO: {
      const int row = 2 * u;
      const float r[2] = {acc0, acc1};
      for (int i = 0; i < 2; ++i)
        st.mid[lo * a.hidden + row + i] = __float2bfloat16(st.residual1(l, row + i) + round_bf16(r[i]));
      break;
    }
    case kGateUp:
      st.gu[lo * a.inter + u] = __float2bfloat16(silu(round_bf16(acc0)) * round_bf16(acc1));
      break;
    case kDown:
      atomicAdd(st.acc + lo * a.hidden + u / st.pieces, acc0);
      break;
    default: {
      const int row = 2 * u;
      const float l0 = round_bf16(acc0), l1 = round_bf16(acc1);
      a.logits[row] = l0;
      unsigned long long key = argmax_key(l0, row);
      if (row + 1 < a.vocab) {
        a.logits[row + 1] = l1;
        key = max(key, argmax_key(l1, row + 1));
      }
      atomicMax(best, key);  // shared memory: the block's best logit so far
    }
  }
}

// 8 values of a q or k head from the qkv buffer, rotated at this lane's dims [d0, d0 + 8) and rounded to bf16
// as the RoPE kernel stores them.
__device__ void rope8(const bf16* head, int d0, const float* cs, bool neox, float (&out)[8]) {
  constexpr int half = D / 2;
  float x[8];
  unpack8(__ldcg(reinterpret_cast<const uint4*>(head + d0)), x);
  if (neox) {  // pairs (i, i + half)
    const bool low = d0 < half;
    const int i0 = low ? d0 : d0 - half;
    float y[8];
    unpack8(__ldcg(reinterpret_cast<const uint4*>(head + (low ? d0 + half : d0 - half))), y);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float c = __ldg(cs + i0 + e), s = __ldg(cs + half + i0 + e);
      out[e] = round_bf16(low ? x[e] * c - y[e] * s : x[e] * c + y[e] * s);
    }
  } else {  // pairs (2i, 2i + 1)
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      const int i = (d0 + e) / 2;
      const float c = __ldg(cs + i), s = __ldg(cs + half + i);
      out[e] = round_bf16(x[e] * c - x[e + 1] * s);
      out[e + 1] = round_bf16(x[e + 1] * c + x[e] * s);
    }
  }
}

// A slot's K (then V) rows, rotated: 16-byte chunk c of row r sits at chunk (c + r % 8) % 16 of the row. The
// producer's cp.async gathers write it so; with it the 8 rows of an ldmatrix fall into 8 different 16-byte bank
// groups (unrotated, 256-byte rows put all 8 in one: 8-way conflicts), and a slot keeps its 32 keys (padding
// rows by 16 bytes would not fit 32 in 16 KB).
__device__ __forceinline__ int rot_off(int row, int chunk) {
  return row * (D * 2) + (((chunk + (row & 7)) & 15) << 4);
}

// The rotated query heads of unit head h as mma.sync A fragments (attn_mma.cuh layout): row g < G of the 16 is
// query head h * G + g, the others zeros. A lane's columns kk * 16 + 2 tig + {0, 1, 8, 9} hold both members of
// each RoPE pair (adjacent columns, or columns c and c + D / 2 in fragments kk and kk + 4), so every lane rotates
// its own values, rounded to bf16 as the RoPE kernel stores them.
__device__ __forceinline__ void rope_q_frags(uint32_t (&qa)[D / 16][4], const bf16* q, const float* cs, bool neox,
                                             bool valid, int tig) {
  constexpr int half = D / 2;
  float x[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int c = kk * 16 + 2 * tig + 8 * p;
      const __nv_bfloat162 v =
          valid ? __ldcg(reinterpret_cast<const __nv_bfloat162*>(q + c)) : __floats2bfloat162_rn(0.f, 0.f);
      x[kk][2 * p] = __low2float(v);
      x[kk][2 * p + 1] = __high2float(v);
    }
  }
  float y[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = kk * 16 + 2 * tig + 8 * (e >> 1) + (e & 1);
      if (neox) {  // pairs (c, c + half): the partner sits in fragment kk +- 4, same slot
        const int i = c & (half - 1);
        const float cv = __ldg(cs + i), sv = __ldg(cs + half + i);
        y[kk][e] = kk < D / 32 ? x[kk][e] * cv - x[kk + D / 32][e] * sv : x[kk][e] * cv + x[kk - D / 32][e] * sv;
      } else {  // pairs (2i, 2i + 1): the partner is the neighbouring value
        const int i = c >> 1;
        const float cv = __ldg(cs + i), sv = __ldg(cs + half + i);
        y[kk][e] = (e & 1) ? x[kk][e] * cv + x[kk][e - 1] * sv : x[kk][e] * cv - x[kk][e + 1] * sv;
      }
    }
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qa[kk][0] = attn::pack2<bf16>(y[kk][0], y[kk][1]);
    qa[kk][1] = 0u;  // rows 8-15
    qa[kk][2] = attn::pack2<bf16>(y[kk][2], y[kk][3]);
    qa[kk][3] = 0u;
  }
}

// S[16 x 32] = Q K^T over one slot's K rows. ldmatrix.x4 matrices: (keys 0-7, dims lo), (keys 0-7, dims hi),
// (keys 8-15, lo), (keys 8-15, hi) of each 16-key pair of tiles. slot_qk and slot_pv are attn_mma.cuh's qk_tile
// and pv_tile over the rotated rows. Giving those a row-address policy instead cost the padded-tile kernels
// registers (ptxas: decode's spill 8 -> 16 bytes, extend's 244 -> 255 registers), so the two stay apart.
__device__ __forceinline__ void slot_qk(float (&s)[kFusedSlotKeys / 8][4], const uint32_t (&qa)[D / 16][4],
                                        const unsigned char* ks, int lane) {
  const int r = (lane & 7) + (lane >> 4) * 8, hi = (lane >> 3) & 1;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < kFusedSlotKeys / 16; ++np) {
      uint32_t b[4];
      attn::ldmatrix_x4(b, ks + rot_off(np * 16 + r, 2 * kk + hi));
      attn::mma_16816<bf16>(s[2 * np], qa[kk], b[0], b[1]);
      attn::mma_16816<bf16>(s[2 * np + 1], qa[kk], b[2], b[3]);
    }
  }
}

// O[16 x D] += P V over one slot's V rows (P: the probabilities in accumulator layout, fed back as bf16 A
// fragments). ldmatrix.x4.trans matrices: (keys 0-7, dims lo), (keys 8-15, lo), (keys 0-7, hi), (keys 8-15, hi).
__device__ __forceinline__ void slot_pv(float (&o)[D / 8][4], const float (&p)[kFusedSlotKeys / 8][4],
                                        const unsigned char* vs, int lane) {
  const int r = (lane & 7) + ((lane >> 3) & 1) * 8, hi = lane >> 4;
#pragma unroll
  for (int kk = 0; kk < kFusedSlotKeys / 16; ++kk) {
    uint32_t pa[4];
    pa[0] = attn::pack2<bf16>(p[2 * kk][0], p[2 * kk][1]);
    pa[1] = attn::pack2<bf16>(p[2 * kk][2], p[2 * kk][3]);
    pa[2] = attn::pack2<bf16>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    pa[3] = attn::pack2<bf16>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
      uint32_t b[4];
      attn::ldmatrix_x4_trans(b, vs + rot_off(kk * 16 + r, 2 * np + hi));
      attn::mma_16816<bf16>(o[2 * np], pa, b[0], b[1]);
      attn::mma_16816<bf16>(o[2 * np + 1], pa, b[2], b[3]);
    }
  }
}

// Attention unit u = (split c, KV head h) of layer l, one warp on the tensor cores: keys [k0, k0 + unit_keys) in
// the unit's ring slots from stream place `at` on, kFusedSlotKeys keys each, whose K rows (then V rows) the
// producer copied, rotated (rot_off), all but the new key: this warp rotates that one's k, stores k and v to the
// cache, and writes both into its slot row. The consumer warp that handed the unit over waited for its first
// slot; this warp waits for the others and frees each once read. Per slot: S = Q K^T (mma.sync, the G query heads
// as rows of 16), one online-softmax step in the accumulator layout (attn_mma.cuh), O += P V. The unit writes its
// partial (unnormalized o, max and sum per head, log2 units); the merge phase combines them.
__device__ __forceinline__ void attention_unit(const Step& st, int l, int u, unsigned at, unsigned char* ring,
                                               uint64_t* full, uint64_t* empty, int lane) {
  const FusedDecodeArgs& a = st.a;
  const int G = st.group;
  const int h = u % a.hkv, c = u / a.hkv;
  const int64_t pos = a.positions[0];
  const int k0 = st.unit_key0(u), nkeys = st.unit_keys(u);
  const int newest = static_cast<int>(a.seq_lens[0] - 1 - k0);  // the new key's index in the unit (>= nkeys: not here)
  const bf16* qkv = st.qkv + static_cast<size_t>(l) * st.nqkv;
  const float* cs = a.cos_sin + pos * D;
  const int g = lane >> 2, tig = lane & 3, half = lane >> 4;
  const float scale = a.scale * kLog2e;  // raw scores to log2 units

  uint32_t qa[D / 16][4];
  rope_q_frags(qa, qkv + static_cast<size_t>(h * G + min(g, G - 1)) * D, cs, a.neox, g < G, tig);
  uint4 kv_new = make_uint4(0, 0, 0, 0);  // lanes 0-15: the new key's rotated k at dims 8 (lane % 16); 16-31: its v
  if (newest < nkeys) {
    const int d0 = 8 * (lane & 15);
    if (half == 0) {
      float k8[8];
      rope8(qkv + static_cast<size_t>(a.hq + h) * D, d0, cs, a.neox, k8);
      kv_new = pack8(k8);
    } else {
      kv_new = __ldcg(reinterpret_cast<const uint4*>(qkv + static_cast<size_t>(a.hq + a.hkv + h) * D + d0));
    }
    const int64_t dst = a.out_cache_loc[0] * a.hkv * D + h * D + d0;
    *reinterpret_cast<uint4*>(static_cast<bf16*>(half == 0 ? a.layers[l].k_cache : a.layers[l].v_cache) + dst) =
        kv_new;
  }

  attn::RowState rs;
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  for (int base = 0, i = 0; base < nkeys; base += kFusedSlotKeys, ++i) {
    const unsigned s = (at + i) % kStages;
    if (i > 0) mbar_wait(&full[s], ((at + i) / kStages) & 1);
    unsigned char* ks = ring + s * kSlotBytes;
    unsigned char* vs = ks + kFusedSlotKeys * D * 2;
    const int nk = min(nkeys - base, kFusedSlotKeys), nw = newest - base;  // this slot's keys, new key's row
    if (nw >= 0 && nw < kFusedSlotKeys)
      *reinterpret_cast<uint4*>((half == 0 ? ks : vs) + rot_off(nw, lane & 15)) = kv_new;
    // V rows past the last key must be zeros: P = 0 times whatever the slot held (NaN bits included) is not 0.
    for (int r = nk + half; r < kFusedSlotKeys; r += 2)
      *reinterpret_cast<uint4*>(vs + rot_off(r, lane & 15)) = make_uint4(0, 0, 0, 0);
    __syncwarp();
    float sc[kFusedSlotKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kFusedSlotKeys / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
    slot_qk(sc, qa, ks, lane);
#pragma unroll
    for (int n = 0; n < kFusedSlotKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (n * 8 + 2 * tig + (e & 1) >= nk) sc[n][e] = -INFINITY;
    attn::softmax_step<kFusedSlotKeys / 8, D / 8>(sc, o, rs, scale);
    slot_pv(o, sc, vs, lane);
    // This warp wrote into the slot (the new key's row, zeroed V rows), and the producer may refill it with
    // bulk copies: order the generic-proxy writes before those async-proxy ones.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);  // the slot's K/V are read
  }
  // The split's partial: row g's unnormalized o, max and sum (log2 units), from the lanes holding rows g < G.
  const float sum = attn::quad_sum(rs.l0);
  if (g < G) {
    const size_t row = (static_cast<size_t>(h) * kFusedMaxSplits + c) * G + g;
    float* po = st.part_o + row * D + 2 * tig;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) __stcg(reinterpret_cast<float2*>(po + 8 * n), make_float2(o[n][0], o[n][1]));
    if (tig == 0) __stcg(reinterpret_cast<float2*>(st.part_ml) + row, make_float2(rs.m0 * scale, sum));
  }
}

// Merge unit qh of layer l, one warp: query head qh's S split partials into its attention output (bf16). Lane
// owns dims [4 lane, 4 lane + 4); kBatch splits' loads are in flight at a time.
__device__ __forceinline__ void merge_unit(const Step& st, int l, int qh, int S, int lane) {
  const int G = st.group, h = qh / G, g = qh % G;
  const float* part_o = st.part_o;
  const float2* part_ml = reinterpret_cast<const float2*>(st.part_ml);
  const size_t pbase = (static_cast<size_t>(h) * kFusedMaxSplits) * G;
  float2 ml[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int p = lane + 32 * r;
    ml[r] = p < S ? __ldcg(part_ml + pbase + p * G + g) : make_float2(-INFINITY, 0.f);
  }
  const float mx = warp_reduce_max(fmaxf(ml[0].x, ml[1].x));
  float wgt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) wgt[r] = lane + 32 * r < S ? exp2f(ml[r].x - mx) : 0.f;
  const float tot = warp_reduce_sum(wgt[0] * ml[0].y + wgt[1] * ml[1].y);
  constexpr int kBatch = 16;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int b = 0; b < kFusedMaxSplits / kBatch; ++b) {
    const int p0 = kBatch * b;
    if (p0 >= S) break;
    float4 v[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i)
      if (p0 + i < S)
        v[i] = __ldcg(reinterpret_cast<const float4*>(part_o + (pbase + static_cast<size_t>(p0 + i) * G + g) * D) + lane);
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const float wp = __shfl_sync(0xffffffffu, wgt[p0 / 32], (p0 + i) & 31);
      if (p0 + i >= S) continue;
      acc.x = fmaf(wp, v[i].x, acc.x);
      acc.y = fmaf(wp, v[i].y, acc.y);
      acc.z = fmaf(wp, v[i].z, acc.z);
      acc.w = fmaf(wp, v[i].w, acc.w);
    }
  }
  const float inv = tot > 0.f ? 1.f / tot : 0.f;
  __nv_bfloat162* dst =
      reinterpret_cast<__nv_bfloat162*>(st.attn + (static_cast<size_t>(l) * st.a.hq + qh) * D + 4 * lane);
  dst[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
  dst[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
}

__global__ void __launch_bounds__(kThreads, 1) fused_decode_kernel(const __grid_constant__ FusedDecodeArgs args) {
#if defined(LITE_SRT_SM90A)
  extern __shared__ __align__(1024) unsigned char smem[];
  const Step st(args);
  const FusedDecodeArgs& a = args;
  const int max_k = max(max(a.hidden, a.inter), st.qd);
  unsigned char* ring = smem;
  bf16* xs = reinterpret_cast<bf16*>(smem + kStages * kSlotBytes);
  float* red = reinterpret_cast<float*>(smem + kStages * kSlotBytes + align256(static_cast<size_t>(max_k) * 2));
  uint64_t* full = reinterpret_cast<uint64_t*>(red + 32);
  uint64_t* empty = full + kStages;
  SlotMeta* meta = reinterpret_cast<SlotMeta*>(empty + kStages);
  Mail* mail = reinterpret_cast<Mail*>(meta + kStages);
  unsigned* mail_head = reinterpret_cast<unsigned*>(mail + kStages);
  unsigned long long* best = reinterpret_cast<unsigned long long*>(mail_head + 4);  // 16 bytes on: 8-aligned
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 1);
      mail[s].seq = 0;
    }
    *mail_head = 0;
    *best = 0;
    mbar_init_fence();
  }
  __syncthreads();

  if (warp >= kAttnWarp) {  // attention and merge units handed over by the consumer warps; each counts itself done
    const int aw = warp - kAttnWarp;
    for (int n = 1 + aw;; n += kAttnWarps) {  // the mail stream's entries n = aw + 1 (mod kAttnWarps)
      Mail* m = mail + (n - 1) % kStages;
      while (m->seq != n) __nanosleep(32);
      __threadfence_block();
      const int ph = m->phase, u = m->unit;
      const unsigned at = m->at;
      if (ph == st.nphase) return;
      if (st.kind(ph) == kMerge) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[at % kStages]);  // a metadata-only slot
        if (!(a.skip & 32)) merge_unit(st, st.layer(ph), u, st.splits, lane);
      } else if (a.skip & 64) {  // timing only: the slots back as they fill, no attention math
        for (int base = 0, i = 0; base < st.unit_keys(u); base += kFusedSlotKeys, ++i) {
          if (i > 0) mbar_wait(&full[(at + i) % kStages], ((at + i) / kStages) & 1);
          __syncwarp();
          if (lane == 0) mbar_arrive(&empty[(at + i) % kStages]);
        }
      } else {
        attention_unit(st, st.layer(ph), u, at, ring, full, empty, lane);
      }
      __syncwarp();
      if (lane == 0) {
        __threadfence();
        atomicAdd(st.done + ph, 1u);  // result unused: a fire-and-forget reduction
      }
    }
  }

  if (warp == kProducerWarp) {  // the producer warp: lane 0 streams weights; all lanes copy an attention unit's K/V rows
    const uint64_t policy = evict_first_policy();
    unsigned j = 0;
    auto next_slot = [&]() {
      const unsigned s = j % kStages, lap = j / kStages;
      if (lane == 0 && lap > 0) mbar_wait(&empty[s], (lap - 1) & 1);
      __syncwarp();
      ++j;
      return s;
    };
    const int64_t seq = a.seq_lens[0];
    const int32_t* table = a.req_to_token + a.req_pool_indices[0] * a.table_stride;
    int taken = 0;
    for (int ph = 0; ph <= st.nphase; ++ph) {
      for (int w = 0; w < kCW; ++w) {
        const unsigned s = next_slot();
        if (lane == 0) {
          meta[s] = {ph, -1, taken, 0};
          mbar_arrive(&full[s]);
        }
      }
      if (ph == st.nphase) break;
      taken = 0;
      const int kind = st.kind(ph), l = st.layer(ph), units = st.units(ph);
      // Attention units are latency, not bytes: a block takes at most its even share, so a producer that
      // reaches the phase early does not queue several behind one another on its own warps.
      const int cap = kind == kAttn || kind == kMerge ? (units + gridDim.x - 1) / gridDim.x : units;
      for (; taken < cap; ++taken) {
        unsigned got = 0;
        if (lane == 0) got = atomicAdd(st.ctr + ph, 1u);
        const int u = static_cast<int>(__shfl_sync(0xffffffffu, got, 0));
        if (u >= units) break;
        const unsigned first = next_slot();
        if (kind == kMerge) {  // metadata only: partials are read by the merging warp itself
          if (lane == 0) {
            meta[first] = {ph, u, 0, 0};
            mbar_arrive(&full[first]);
          }
          continue;
        }
        if (kind == kAttn) {  // the unit's slots: keys k0 + lane of each, K then V rows, all but the new key
          const int h = u % a.hkv, k0 = st.unit_key0(u), nkeys = st.unit_keys(u);
          for (int base = 0, i = 0; base < nkeys; base += kFusedSlotKeys, ++i) {
            const unsigned s = i == 0 ? first : next_slot();
            unsigned char* dst = ring + s * kSlotBytes;
            const int64_t left = seq - 1 - (k0 + base);
            const int nk = static_cast<int>(left < 0 ? 0 : left > kFusedSlotKeys ? kFusedSlotKeys : left);
            const int64_t slot_id = lane < nk ? __ldcg(table + k0 + base + lane) : 0;
            if (lane == 0) meta[s] = {ph, u, 0, i};
            // 16-byte cp.async gathers, two rows (keys 2 it, 2 it + 1) per warp instruction, into the rotated
            // layout (rot_off). (As bulk copies, the rotation took ~120 small ones per slot.) Each lane's
            // cp.async.mbarrier.arrive adds one pending arrival that lands when its copies have; lane 0's
            // ordinary arrival, after all of them, is the barrier's expected one.
            const FusedLayer& L = a.layers[l];
            const bf16* kc = static_cast<const bf16*>(L.k_cache);
            const bf16* vc = static_cast<const bf16*>(L.v_cache);
            const int chunk = lane & 15;
#pragma unroll 4
            for (int it = 0; it < kFusedSlotKeys / 2; ++it) {
              const int r = 2 * it + (lane >> 4);
              const int64_t id = __shfl_sync(0xffffffffu, slot_id, r);
              if (r < nk) {
                const int64_t at = (id * a.hkv + h) * D + chunk * 8;
                attn::cp_async_16(dst + rot_off(r, chunk), kc + at, true);
                attn::cp_async_16(dst + kFusedSlotKeys * D * 2 + rot_off(r, chunk), vc + at, true);
              }
            }
            asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(smem_u32(&full[s])) : "memory");
            __syncwarp();
            if (lane == 0) mbar_arrive(&full[s]);
          }
          continue;
        }
        if (lane != 0) continue;
        meta[first] = {ph, u, 0, 0};
        const Copy cp = unit_copy(st, kind, l, u);
        mbar_expect_tx(&full[first], cp.src1 != nullptr ? 2 * cp.bytes : cp.bytes);
        unsigned char* dst = ring + first * kSlotBytes;
        bulk_load(dst, cp.src0, cp.bytes, &full[first], policy);
        if (cp.src1 != nullptr) bulk_load(dst + cp.bytes, cp.src1, cp.bytes, &full[first], policy);
      }
    }
    return;
  }

  // Zero this block's share of the down accumulators; the first phase barrier (which counts every block, each
  // adding only after a fence that follows these stores) orders them before any down phase.
  const int nacc = a.num_layers * a.hidden;
  for (int i = blockIdx.x * (kCW * 32) + threadIdx.x; i < nacc; i += gridDim.x * (kCW * 32)) st.acc[i] = 0.f;
  int kind = kQkv, layer = 0;
  for (unsigned j = warp;; j += kCW) {
    const unsigned s = j % kStages;
    mbar_wait(&full[s], (j / kStages) & 1);
    const SlotMeta mt = meta[s];
    if (mt.unit < 0) {  // phase marker
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);
      consumers_sync();  // every warp of the block is past its units of the previous phase
      if (threadIdx.x == 0 && mt.phase > 0) {
        __threadfence();
        unsigned* d = st.done + mt.phase - 1;
        // Attention units count themselves as the attention warp finishes them; the block adds its arrival.
        const int prev_kind = st.kind(mt.phase - 1);
        const bool self_counted = (prev_kind == kAttn || prev_kind == kMerge) && !(a.skip & 2);
        atomicAdd(d, static_cast<unsigned>((self_counted ? 0 : mt.count) + 1));
        if (mt.phase < st.nphase && !(a.skip & 1)) {
          const unsigned target = static_cast<unsigned>(st.units(mt.phase - 1)) + gridDim.x;
          while (load_acquire(d) < target) {
          }
        }
      }
      if (mt.phase == st.nphase) {
        if (threadIdx.x == 0) {
          finish_argmax(st, *best);
          for (int w = 0; w < kAttnWarps; ++w) post(mail, mail_head, mt.phase, 0, 0);  // the attention warps leave
        }
        return;
      }
      consumers_sync();
      kind = st.kind(mt.phase);
      layer = st.layer(mt.phase);
      if (!(a.skip & 8)) load_input(st, mt.phase, xs, red);
      continue;
    }
    if (kind == kAttn || kind == kMerge) {  // to the attention warps, which free the unit's slots once read
      if (lane == 0) {
        if (a.skip & 2)
          mbar_arrive(&empty[s]);
        else if (mt.part == 0)  // a unit's later slots are the attention warp's to wait for
          post(mail, mail_head, layer * kPhasesPerLayer + kind, mt.unit, j);
      }
      __syncwarp();
      continue;
    }
    weight_unit(st, kind, layer, mt.unit, ring + s * kSlotBytes, &empty[s], xs, best, lane);
  }
#endif
}

}  // namespace

bool fused_decode_available() {
  return has_sm90a_code<fused_decode_kernel>();
}

cudaError_t launch_fused_decode(const FusedDecodeArgs& a, cudaStream_t stream) {
  if (!fused_decode_available()) return cudaErrorNotSupported;
  const size_t smem = smem_bytes(a.hidden, a.inter, a.hq);
  cudaError_t err = cudaFuncSetAttribute(fused_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  int dev = 0, sms = 0, per_sm = 0;
  if ((err = cudaGetDevice(&dev)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return err;
  // Every block must be resident at once (they wait for each other at the phase barriers).
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fused_decode_kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  if (per_sm < 1) return cudaErrorInvalidConfiguration;
  err = cudaMemsetAsync(a.counters, 0, fused_decode_counters(a.num_layers) * sizeof(unsigned), stream);
  if (err != cudaSuccess) return err;
  fused_decode_kernel<<<sms, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

#else  // ROCm: no bulk copies or mbarriers; the model runs the unfused step.

bool fused_decode_available() { return false; }
cudaError_t launch_fused_decode(const FusedDecodeArgs&, cudaStream_t) { return cudaErrorNotSupported; }

#endif  // !USE_ROCM

}  // namespace lite_srt
