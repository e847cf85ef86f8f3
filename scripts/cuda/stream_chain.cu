// How fast can ONE persistent kernel stream the batch-1 linear-layer chain of Llama-3.1-8B (bf16)?
//
// A feasibility benchmark for a batch-1 decode "megakernel" (standalone: nvcc only, no torch, Hopper sm_90a).
// Separate GEMV kernels lose a few microseconds at every kernel boundary (ramp-up, tail, launch), ~17 us per
// layer on the H100. Here one block per SM (or two) runs the whole chain: a producer lane streams weight chunks,
// layer after layer, through a shared-memory ring with cp.async.bulk (it never waits for the activations, only
// for free slots), and consumer warps wait for each phase's input, then dot the streamed rows with it. Two
// kernels:
//   static   each block takes a fixed slice of every matrix; a grid barrier (blocks arrived) per phase.
//   dynamic  blocks grab units from a per-phase counter; the barrier counts finished units (dyn_chain_kernel).
//            With `kStaged` a consumer copies its slot into registers and frees it before the dot products,
//            so the slot's refill overlaps them: the consumer side, not the split, was what held the stream
//            back (session 16).
// Per layer: RMSNorm -> qkv (6144 x 4096) -> o (4096 x 4096; its input stands in for attention's output) ->
// RMSNorm -> gate_up (2 x 14336 x 4096) with silu(gate) * up -> down (4096 x 14336); then the LM head
// (128256 x 4096). Checked against plain per-phase kernels (same bf16 roundings, other summation order).
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a scripts/cuda/stream_chain.cu -o /tmp/stream_chain
//   /tmp/stream_chain            # prints the check, then a table last
//
// Also timed: the static kernel launched once per phase from a CUDA graph (what the boundaries cost with identical
// GEMV code), timing-only cuts of the dynamic kernel, and the device's copy and read bandwidth. Results:
// docs/BENCHMARKS.md, sessions 15 and 16. stream_read.cu times the same bytes with no compute at all.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bulk_ring.cuh"

namespace {

using namespace bulk;

constexpr int kHidden = 4096, kQkv = 6144, kInter = 14336, kVocab = 128256;
constexpr int kConsumerWarps = 8;
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + one producer warp (the last)
constexpr int kMaxK = kInter;
constexpr int kMaxPart = 512;  // per-block partial results held in shared memory (static kernel: gate_up, down)
constexpr int kMaxRows = 4;    // whole rows per chunk (chunks of up to 32 KB at K = 4096)

enum Kind : int { kPlain = 0, kGateUp = 1, kSplit = 2 };

struct Phase {
  const __nv_bfloat16* w;  // [rows, K] row-major (gate_up: gate rows, then up rows)
  const void* in;          // [K] bf16 (fp32 when in_f32)
  void* out;               // [N] bf16 (fp32 for the LM head)
  int n;                   // output rows (gate_up: 14336)
  int k;
  int kind;
  int norm;       // RMSNorm the input first (unit weight)
  int out_f32;
  int in_f32;     // the input is fp32 (the dynamic kernel's down accumulators), rounded to bf16 on load
};

// The chunks of one phase a block streams: its rows [r0, r1) in `segs` contiguous segments (gate_up: the gate
// rows, then the same up rows). A chunk is `rpc` whole rows (K <= 8192) or 1/`pieces` of a row (K > 8192).
struct Slice {
  int r0, r1, segs, rpc, pieces, chunks_per_seg;
  __host__ __device__ Slice(const Phase& p, int b, int g, int chunk_bytes) {
    r0 = static_cast<int>((static_cast<long long>(p.n) * b) / g);
    r1 = static_cast<int>((static_cast<long long>(p.n) * (b + 1)) / g);
    segs = p.kind == kGateUp ? 2 : 1;
    if (p.k <= chunk_bytes / 2) {
      rpc = (chunk_bytes / 2) / p.k;
      pieces = 1;
      chunks_per_seg = (r1 - r0 + rpc - 1) / rpc;
    } else {
      rpc = 1;
      pieces = (p.k * 2 + chunk_bytes - 1) / chunk_bytes;
      chunks_per_seg = (r1 - r0) * pieces;
    }
  }
  __host__ __device__ int chunks() const { return segs * chunks_per_seg; }
};

struct Chunk {
  int local_row;  // row index within the block's phase rows (gate_up: up rows follow the gate rows)
  int rows;       // whole rows in the chunk (1 when pieces > 1)
  int piece;
  long long src;  // element offset in the weight
  int elems;
};

__host__ __device__ inline Chunk chunk_of(const Phase& p, const Slice& s, int c) {
  const int seg = c / s.chunks_per_seg, ci = c % s.chunks_per_seg;
  const int n = s.r1 - s.r0;
  const int grow0 = (seg == 0 ? s.r0 : p.n + s.r0);  // first weight row of the segment
  Chunk ch;
  if (s.pieces == 1) {
    ch.local_row = seg * n + ci * s.rpc;
    ch.rows = min(s.rpc, n - ci * s.rpc);
    ch.piece = 0;
    ch.src = static_cast<long long>(grow0 + ci * s.rpc) * p.k;
    ch.elems = ch.rows * p.k;
  } else {
    const int r = ci / s.pieces, pc = ci % s.pieces, pe = p.k / s.pieces;
    ch.local_row = seg * n + r;
    ch.rows = 1;
    ch.piece = pc;
    ch.src = static_cast<long long>(grow0 + r) * p.k + static_cast<long long>(pc) * pe;
    ch.elems = pe;
  }
  return ch;
}

template <int kCW = kConsumerWarps>
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kCW * 32) : "memory");
}

__device__ __forceinline__ void unpack8(uint4 v, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ float dot8(uint4 w, const float (&x)[8]) {
  float f[8];
  unpack8(w, f);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) s = fmaf(f[i], x[i], s);
  return s;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }

// Consumers: the phase input (RMSNormed when asked) into shared memory as bf16, as the reference rounds it.
template <int kCW = kConsumerWarps>
__device__ void load_input(const Phase& p, __nv_bfloat16* xs, float* red) {
  const int t = threadIdx.x, nv = p.k / 8;
  const uint4* in = static_cast<const uint4*>(p.in);
  uint4* xv = reinterpret_cast<uint4*>(xs);
  float ss = 0.f;
  for (int i = t; i < nv; i += kCW * 32) {
    uint4 v;
    if (p.in_f32) {
      const float4* f = reinterpret_cast<const float4*>(p.in) + 2 * i;
      const float4 a = __ldcg(f), c = __ldcg(f + 1);
      __nv_bfloat162 o[4] = {__floats2bfloat162_rn(a.x, a.y), __floats2bfloat162_rn(a.z, a.w),
                             __floats2bfloat162_rn(c.x, c.y), __floats2bfloat162_rn(c.z, c.w)};
      v = *reinterpret_cast<uint4*>(o);
    } else {
      v = __ldcg(in + i);
    }
    xv[i] = v;
    if (p.norm) {
      float f[8];
      unpack8(v, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss = fmaf(f[j], f[j], ss);
    }
  }
  if (!p.norm) {
    consumers_sync<kCW>();
    return;
  }
  ss = warp_sum(ss);
  if ((t & 31) == 0) red[t >> 5] = ss;
  consumers_sync<kCW>();
  float tot = 0.f;
#pragma unroll
  for (int w = 0; w < kCW; ++w) tot += red[w];
  const float scale = rsqrtf(tot / p.k + 1e-5f);
  for (int i = t; i < nv; i += kCW * 32) {
    float f[8];
    unpack8(xv[i], f);
    __nv_bfloat162 o[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) o[j] = __floats2bfloat162_rn(f[2 * j] * scale, f[2 * j + 1] * scale);
    xv[i] = *reinterpret_cast<uint4*>(o);
  }
  consumers_sync<kCW>();
}

// Slot s of the ring is always consumed by warp s % 8 (chunk j goes to warp j % 8), so a warp waits on a slot's
// barriers strictly in order and never more than one phase ahead of them: kStages must be a multiple of 8.
template <int kStages, int kChunkBytes, bool kHint, int kProducers = 1>
__global__ void __launch_bounds__(kThreads, 1)
    stream_chain_kernel(const Phase* __restrict__ phases, int nphase, unsigned* __restrict__ grid_bar) {
  static_assert(kStages % kConsumerWarps == 0, "a slot must belong to one consumer warp");
  extern __shared__ __align__(1024) unsigned char smem[];
  unsigned char* ring = smem;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem + kStages * kChunkBytes);
  float* part = reinterpret_cast<float*>(xs + kMaxK);
  float* red = part + kMaxPart;
  uint64_t* full = reinterpret_cast<uint64_t*>(red + 32);
  uint64_t* empty = full + kStages;
  const int g = gridDim.x, b = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  init_ring(full, empty, kStages);

  if (warp == kConsumerWarps) {  // producer lanes: stream every chunk of every phase, in order (chunk j by lane j % P)
    if (lane >= kProducers) return;
    uint64_t policy = 0;
    if constexpr (kHint) policy = evict_first_policy();
    unsigned j = 0;
    for (int ph = 0; ph < nphase; ++ph) {
      const Phase p = phases[ph];
      const Slice sl(p, b, g, kChunkBytes);
      for (int c = 0; c < sl.chunks(); ++c, ++j) {
        if (j % kProducers != static_cast<unsigned>(lane)) continue;
        const Chunk ch = chunk_of(p, sl, c);
        const unsigned s = j % kStages, k = j / kStages;
        if (k > 0) mbar_wait(&empty[s], (k - 1) & 1);
        mbar_expect_tx(&full[s], ch.elems * 2);
        bulk_load<kHint>(ring + s * kChunkBytes, p.w + ch.src, ch.elems * 2, &full[s], policy);
      }
    }
    return;
  }

  unsigned base = 0;  // index of this phase's first chunk in the block's stream
  for (int ph = 0; ph < nphase; ++ph) {
    const Phase p = phases[ph];
    const Slice sl(p, b, g, kChunkBytes);
    if (ph > 0) {  // grid barrier: every block has written the previous phase's output
      if (threadIdx.x == 0) {
        const unsigned target = static_cast<unsigned>(ph) * g;
        unsigned seen = 0;
        do {
          asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(grid_bar) : "memory");
        } while (seen < target);
      }
      consumers_sync();
    }
    load_input(p, xs, red);
    const uint4* xv = reinterpret_cast<const uint4*>(xs);
    const int nc = sl.chunks(), n = sl.r1 - sl.r0;
    // Chunk j of the stream belongs to consumer warp j % 8.
    unsigned first = base + ((warp - base % kConsumerWarps + kConsumerWarps) % kConsumerWarps);
    for (unsigned j = first; j < base + nc; j += kConsumerWarps) {
      const Chunk ch = chunk_of(p, sl, static_cast<int>(j - base));
      const unsigned s = j % kStages;
      mbar_wait(&full[s], (j / kStages) & 1);
      const uint4* w = reinterpret_cast<const uint4*>(ring + s * kChunkBytes);
      const int pe = ch.elems / ch.rows / 8;  // 16-byte vectors per row (piece)
      const int xo = ch.piece * pe;
      float acc[kMaxRows] = {};
      for (int i = lane; i < pe; i += 32) {
        float x[8];
        unpack8(xv[xo + i], x);
#pragma unroll
        for (int r = 0; r < kMaxRows; ++r)
          if (r < ch.rows) acc[r] += dot8(w[r * pe + i], x);
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);  // the slot's bytes are read (values are in registers)
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) acc[r] = warp_sum(acc[r]);
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < kMaxRows; ++r) {
          if (r >= ch.rows) break;
          const int lr = ch.local_row + r;
          if (p.kind == kPlain) {
            if (p.out_f32)
              static_cast<float*>(p.out)[sl.r0 + lr] = acc[r];
            else
              static_cast<__nv_bfloat16*>(p.out)[sl.r0 + lr] = __float2bfloat16(acc[r]);
          } else {
            part[lr * sl.pieces + ch.piece] = acc[r];
          }
        }
      }
    }
    base += nc;
    consumers_sync();
    if (p.kind != kPlain) {
      __nv_bfloat16* out = static_cast<__nv_bfloat16*>(p.out);
      for (int i = threadIdx.x; i < n; i += kConsumers) {
        float v;
        if (p.kind == kGateUp) {
          v = silu(__bfloat162float(__float2bfloat16(part[i]))) * __bfloat162float(__float2bfloat16(part[n + i]));
        } else {
          v = 0.f;
          for (int q = 0; q < sl.pieces; ++q) v += part[i * sl.pieces + q];
        }
        out[sl.r0 + i] = __float2bfloat16(v);
      }
      consumers_sync();
    }
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(grid_bar, 1u);
    }
  }
}

// ---- the dynamic variant: blocks take units of work from a per-phase counter --------------------------------
//
// stream_read.cu shows the bulk-copy ring streams the chain's bytes at 3.13-3.2 TB/s when no block waits for
// another, while the static kernel above reaches 2.6-2.7. Here a block's producer grabs `kGrab` units at a time
// from the phase's counter until it runs out, so faster blocks take more (alone this gained nothing: the
// consumers held each slot through their dot products, see kStaged). Units: `rpc` whole rows (plain), one gate
// row with its up row (gate_up: one warp writes silu(g) * u), or one of `pieces` pieces of a down row (added into
// an fp32 accumulator with atomics, rounded to bf16 by the next phase's load). The phase barrier counts finished units:
// when the producer starts a phase it sends one marker slot to each consumer warp, carrying how many units of
// the previous phase the block took; at the marker the block adds that count to the previous phase's `done`
// counter, then waits until `done` reaches the phase's unit total.
struct Unit {
  long long src0, src1;  // element offsets of the unit's one or two copies (src1 < 0: none)
  int row, rows, piece, elems;  // elems per copy
};

struct Geometry {
  int units = 0, rpc = 1, pieces = 1;
  Geometry() = default;
  __host__ __device__ Geometry(const Phase& p, int chunk_bytes) {
    rpc = 1;
    pieces = 1;
    if (p.kind == kPlain) {
      rpc = min(2, (chunk_bytes / 2) / p.k);  // the register-staged consumer handles two rows
      units = (p.n + rpc - 1) / rpc;
    } else if (p.kind == kGateUp) {
      units = p.n;  // chunk_bytes >= 4K: a gate row and its up row
    } else {
      pieces = (p.k * 2 + chunk_bytes - 1) / chunk_bytes;
      units = p.n * pieces;
    }
  }
  __host__ __device__ Unit unit(const Phase& p, int u) const {
    Unit r;
    r.src1 = -1;
    r.piece = 0;
    if (p.kind == kPlain) {
      r.row = u * rpc;
      r.rows = min(rpc, p.n - r.row);
      r.src0 = static_cast<long long>(r.row) * p.k;
      r.elems = r.rows * p.k;
    } else if (p.kind == kGateUp) {
      r.row = u;
      r.rows = 2;
      r.src0 = static_cast<long long>(u) * p.k;
      r.src1 = static_cast<long long>(p.n + u) * p.k;
      r.elems = p.k;
    } else {
      r.row = u / pieces;
      r.piece = u % pieces;
      r.rows = 1;
      r.elems = p.k / pieces;
      r.src0 = static_cast<long long>(r.row) * p.k + static_cast<long long>(r.piece) * r.elems;
    }
    return r;
  }
};

struct SlotMeta {
  int phase;
  int unit;   // < 0: a phase marker
  int count;  // marker: units of phase - 1 this block took
};

// `skip` (timing only, results wrong): 1 = no barrier wait, 2 = no input load, 4 = no dot products.
template <int kStages, int kChunkBytes, int kGrab, int kCW, bool kStaged>
__global__ void __launch_bounds__((kCW + 1) * 32, 1)
    dyn_chain_kernel(const Phase* __restrict__ phases, int nphase, unsigned* __restrict__ ctr,
                     unsigned* __restrict__ done, float* __restrict__ acc_zero, int acc_n, int skip) {
  static_assert(kStages % kCW == 0, "a slot must belong to one consumer warp");
  extern __shared__ __align__(1024) unsigned char smem[];
  unsigned char* ring = smem;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem + kStages * kChunkBytes);
  float* red = reinterpret_cast<float*>(xs + kMaxK);
  uint64_t* full = reinterpret_cast<uint64_t*>(red + 32);
  uint64_t* empty = full + kStages;
  SlotMeta* meta = reinterpret_cast<SlotMeta*>(empty + kStages);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  init_ring(full, empty, kStages);

  if (warp == kCW) {
    if (lane != 0) return;
    const uint64_t policy = evict_first_policy();
    SlotCursor slots{empty, kStages};
    int taken = 0;
    for (int ph = 0; ph <= nphase; ++ph) {
      for (int w = 0; w < kCW; ++w) {
        const unsigned s = slots.next();
        meta[s] = {ph, -1, taken};
        mbar_arrive(&full[s]);
      }
      if (ph == nphase) break;
      taken = 0;
      const Phase p = phases[ph];
      const Geometry geo(p, kChunkBytes);
      auto load = [&](int u) {
        const Unit un = geo.unit(p, u);
        const unsigned s = slots.next();
        meta[s] = {ph, u, 0};
        const uint32_t bytes = un.elems * 2;
        mbar_expect_tx(&full[s], un.src1 >= 0 ? 2 * bytes : bytes);
        bulk_load<true>(ring + s * kChunkBytes, p.w + un.src0, bytes, &full[s], policy);
        if (un.src1 >= 0) bulk_load<true>(ring + s * kChunkBytes + bytes, p.w + un.src1, bytes, &full[s], policy);
      };
      for (;;) {
        const int u0 = static_cast<int>(atomicAdd(&ctr[ph], static_cast<unsigned>(kGrab)));
        if (u0 >= geo.units) break;
        for (int u = u0; u < u0 + kGrab && u < geo.units; ++u, ++taken) load(u);
      }
    }
    return;
  }

  // Zero this block's share of the down accumulators. Every down phase waits for the `done` count of the phase
  // before it, which includes every block's count, each added (after a fence) only once these stores are made.
  for (int i = blockIdx.x * (kCW * 32) + threadIdx.x; i < acc_n; i += gridDim.x * (kCW * 32)) acc_zero[i] = 0.f;
  Phase p{};
  Geometry geo;  // set at each phase's marker
  for (unsigned j = warp;; j += kCW) {
    const unsigned s = j % kStages;
    mbar_wait(&full[s], (j / kStages) & 1);
    const SlotMeta m = meta[s];
    if (m.unit < 0) {
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);
      consumers_sync<kCW>();  // every warp is past the previous phase's units (they come before the markers)
      if (threadIdx.x == 0) {
        __threadfence();
        if (m.phase > 0) atomicAdd(&done[m.phase - 1], static_cast<unsigned>(m.count));
        if (m.phase > 0 && m.phase < nphase && !(skip & 1)) {
          const unsigned target = static_cast<unsigned>(Geometry(phases[m.phase - 1], kChunkBytes).units);
          unsigned seen = 0;
          do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(done + m.phase - 1) : "memory");
          } while (seen < target);
        }
      }
      if (m.phase == nphase) return;
      consumers_sync<kCW>();
      p = phases[m.phase];
      geo = Geometry(p, kChunkBytes);
      if (!(skip & 2)) load_input<kCW>(p, xs, red);
      continue;
    }
    if (skip & 4) {
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);
      continue;
    }
    const Unit un = geo.unit(p, m.unit);
    const uint4* w = reinterpret_cast<const uint4*>(ring + s * kChunkBytes);
    const int pe = un.elems / 8 / (p.kind == kPlain ? un.rows : 1);  // 16-byte vectors per row (piece)
    const uint4* xv = reinterpret_cast<const uint4*>(xs) + un.piece * pe;
    float acc[kMaxRows] = {};
    if constexpr (kStaged) {
      // The lane's share of the slot into registers first, then the slot goes back to the producer: its refill
      // (an HBM round trip) overlaps these dot products instead of following them.
      constexpr int kVec = kChunkBytes / 512;
      const int total = (un.src1 >= 0 ? 2 : 1) * un.elems / 8;  // 16-byte vectors in the slot
      const int vpr = pe / 32;                                  // a lane's vectors per row (pe % 32 == 0)
      uint4 wv[kVec];
#pragma unroll
      for (int v = 0; v < kVec; ++v)
        if (v * 32 < total) wv[v] = w[v * 32 + lane];
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        if (v * 32 >= total) break;
        const bool second = v >= vpr;  // the second row (plain) or the up row (gate_up)
        float x[8];
        unpack8(xv[(second ? v - vpr : v) * 32 + lane], x);
        const float d = dot8(wv[v], x);
        if (second)
          acc[1] += d;
        else
          acc[0] += d;
      }
    } else {
      for (int i = lane; i < pe; i += 32) {
        float x[8];
        unpack8(xv[i], x);
#pragma unroll
        for (int r = 0; r < kMaxRows; ++r)
          if (r < un.rows) acc[r] += dot8(w[r * pe + i], x);
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);
    }
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) acc[r] = warp_sum(acc[r]);
    if (lane != 0) continue;
    if (p.kind == kPlain) {
      for (int r = 0; r < un.rows; ++r) {
        if (p.out_f32)
          static_cast<float*>(p.out)[un.row + r] = acc[r];
        else
          static_cast<__nv_bfloat16*>(p.out)[un.row + r] = __float2bfloat16(acc[r]);
      }
    } else if (p.kind == kGateUp) {
      const float v = silu(__bfloat162float(__float2bfloat16(acc[0]))) * __bfloat162float(__float2bfloat16(acc[1]));
      static_cast<__nv_bfloat16*>(p.out)[un.row] = __float2bfloat16(v);
    } else {
      atomicAdd(static_cast<float*>(p.out) + un.row, acc[0]);
    }
  }
}

// ---- reference: one block per output row, fp32 sums, the same bf16 roundings ---------------------------------

__global__ void ref_norm(const void* in_raw, int in_f32, __nv_bfloat16* out, int k, int norm) {
  __shared__ float red[32];
  // bf16 input, or fp32 rounded to bf16 first (as the kernel loads it)
  auto in = [&](int i) {
    return in_f32 ? __bfloat162float(__float2bfloat16(static_cast<const float*>(in_raw)[i]))
                  : __bfloat162float(static_cast<const __nv_bfloat16*>(in_raw)[i]);
  };
  float ss = 0.f;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const float v = in(i);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = ss;
  __syncthreads();
  float tot = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) tot += red[w];
  const float scale = norm ? rsqrtf(tot / k + 1e-5f) : 1.f;
  for (int i = threadIdx.x; i < k; i += blockDim.x)
    out[i] = __float2bfloat16(in(i) * scale);
}

__global__ void ref_rows(const __nv_bfloat16* w, const __nv_bfloat16* x, float* out, int k) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  float s = 0.f;
  for (int i = threadIdx.x; i < k; i += blockDim.x)
    s += __bfloat162float(w[row * k + i]) * __bfloat162float(x[i]);
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) t += red[i];
    out[row] = t;
  }
}

__global__ void ref_finish(const float* rows, void* out, int n, int kind, int out_f32) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v;
  if (kind == kGateUp)
    v = silu(__bfloat162float(__float2bfloat16(rows[i]))) * __bfloat162float(__float2bfloat16(rows[n + i]));
  else
    v = rows[i];
  if (out_f32)
    static_cast<float*>(out)[i] = v;
  else
    static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16(v);
}

__global__ void init_uniform(__nv_bfloat16* p, long long n, float scale, unsigned seed) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ (static_cast<unsigned>(i >> 32) + seed) * 2246822519u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    h *= 3266489917u;
    h ^= h >> 16;
    p[i] = __float2bfloat16((h * (1.0f / 4294967296.0f) * 2.f - 1.f) * scale);
  }
}

// Activations get their own buffers per layer (h[l] is layer l's input), so every phase can be checked
// against the reference fed with the kernel's own input: errors do not compound through 32 layers.
struct Model {
  std::vector<__nv_bfloat16*> qkv, o, gu, down;
  __nv_bfloat16* lm = nullptr;
  std::vector<__nv_bfloat16*> h, q, h2, act;
  float* logits = nullptr;
  float* hf = nullptr;  // [layers + 1, hidden] fp32 down accumulators of the dynamic kernel (row 0 unused)
};

__nv_bfloat16* alloc_init(long long n, int k, unsigned seed) {
  __nv_bfloat16* p;
  CK(cudaMalloc(&p, n * 2));
  init_uniform<<<4096, 256>>>(p, n, std::sqrt(3.f / k), seed);
  CK(cudaGetLastError());
  return p;
}

// `dyn`: the dynamic kernel's layout, where down adds into fp32 accumulators (hf) that the next phase reads.
std::vector<Phase> build_phases(const Model& m, int layers, bool dyn = false) {
  std::vector<Phase> ph;
  auto h_in = [&](int l) -> Phase {
    Phase p{};
    p.in = dyn && l > 0 ? static_cast<const void*>(m.hf + l * kHidden) : m.h[l];
    p.in_f32 = dyn && l > 0;
    return p;
  };
  for (int l = 0; l < layers; ++l) {
    Phase qkv = h_in(l);
    qkv.w = m.qkv[l], qkv.out = m.q[l], qkv.n = kQkv, qkv.k = kHidden, qkv.kind = kPlain, qkv.norm = 1;
    ph.push_back(qkv);
    // q rows stand in for attention's output
    ph.push_back({m.o[l], m.q[l], m.h2[l], kHidden, kHidden, kPlain, 0, 0});
    ph.push_back({m.gu[l], m.h2[l], m.act[l], kInter, kHidden, kGateUp, 1, 0});
    if (dyn)
      ph.push_back({m.down[l], m.act[l], m.hf + (l + 1) * kHidden, kHidden, kInter, kSplit, 0, 1});
    else
      ph.push_back({m.down[l], m.act[l], m.h[l + 1], kHidden, kInter, kSplit, 0, 0});
  }
  Phase lm = h_in(layers);
  lm.w = m.lm, lm.out = m.logits, lm.n = kVocab, lm.k = kHidden, lm.kind = kPlain, lm.norm = 1, lm.out_f32 = 1;
  ph.push_back(lm);
  return ph;
}

// The reference output of one phase, from the phase's input as it is in memory now, into `out`.
void run_reference(const Phase& p, __nv_bfloat16* xn, float* rows, void* out) {
  ref_norm<<<1, 1024>>>(p.in, p.in_f32, xn, p.k, p.norm);
  const int nrows = p.kind == kGateUp ? 2 * p.n : p.n;
  ref_rows<<<nrows, 256>>>(p.w, xn, rows, p.k);
  ref_finish<<<(p.n + 255) / 256, 256>>>(rows, out, p.n, p.kind, p.out_f32);
  CK(cudaGetLastError());
}

std::vector<float> to_host(const void* p, int n, bool f32) {
  std::vector<float> v(n);
  if (f32) {
    CK(cudaMemcpy(v.data(), p, n * 4, cudaMemcpyDeviceToHost));
  } else {
    std::vector<__nv_bfloat16> b(n);
    CK(cudaMemcpy(b.data(), p, n * 2, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) v[i] = __bfloat162float(b[i]);
  }
  return v;
}

// Dynamic shared memory of a kernel variant, allowed on the function.
template <int kStages, int kChunkBytes, bool kHint, int kProducers>
int prepare(void (*kern)(const Phase*, int, unsigned*)) {
  const int smem = kStages * kChunkBytes + kMaxK * 2 + kMaxPart * 4 + 32 * 4 + 2 * kStages * 8;
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  return smem;
}

// The whole chain in one cooperative launch (the grid barrier needs every block resident).
template <int kStages, int kChunkBytes, bool kHint, int kProducers = 1>
float run_chain(const Phase* d_ph, int nphase, unsigned* bar, int blocks, int iters) {
  auto kern = stream_chain_kernel<kStages, kChunkBytes, kHint, kProducers>;
  const int smem = prepare<kStages, kChunkBytes, kHint, kProducers>(kern);
  return best_ms(0, iters, [&] {
    CK(cudaMemsetAsync(bar, 0, 4));
    void* args[] = {const_cast<Phase**>(&d_ph), &nphase, &bar};
    CK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kern), blocks, kThreads, args, smem, 0));
  });
}

// The dynamic kernel in one cooperative launch; its counters are zeroed before each run (in the timing).
template <int kStages, int kChunkBytes, int kGrab, int kCW, bool kStaged = true>
float run_dyn(const Phase* d_ph, int nphase, unsigned* counters, float* hf, int blocks, int iters, int skip = 0) {
  auto kern = dyn_chain_kernel<kStages, kChunkBytes, kGrab, kCW, kStaged>;
  const int smem = kStages * kChunkBytes + kMaxK * 2 + 32 * 4 + 2 * kStages * 8 + kStages * sizeof(SlotMeta);
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  unsigned* done = counters + nphase;
  float* acc = hf + kHidden;  // rows 1.. (row 0 is never an accumulator)
  int acc_n = kHidden * ((nphase - 1) / 4);
  return best_ms(0, iters, [&] {
    CK(cudaMemsetAsync(counters, 0, 2 * nphase * 4));
    void* args[] = {const_cast<Phase**>(&d_ph), &nphase, &counters, &done, &acc, &acc_n, &skip};
    CK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kern), blocks, (kCW + 1) * 32, args, smem, 0));
  });
}

// The same kernel launched once per phase (no grid barrier needed), replayed from a CUDA graph: what the kernel
// boundaries cost with identical GEMV code.
template <int kStages, int kChunkBytes, bool kHint, int kProducers = 1>
float run_per_phase(const Phase* d_ph, int nphase, unsigned* bar, int blocks, int iters) {
  auto kern = stream_chain_kernel<kStages, kChunkBytes, kHint, kProducers>;
  const int smem = prepare<kStages, kChunkBytes, kHint, kProducers>(kern);
  return graph_best_ms(iters, [&](cudaStream_t st) {
    for (int i = 0; i < nphase; ++i) kern<<<blocks, kThreads, smem, st>>>(d_ph + i, 1, bar);
  });
}

float max_rel_err(const float* a, const float* b, int n) {
  float md = 0.f, mb = 0.f;
  for (int i = 0; i < n; ++i) {
    md = std::fmax(md, std::fabs(a[i] - b[i]));
    mb = std::fmax(mb, std::fabs(b[i]));
  }
  return md / mb;
}

}  // namespace

int main() {
  const int sms = print_device();
  constexpr int kLayers = 32;
  Model m;
  for (int l = 0; l < kLayers; ++l) {
    m.qkv.push_back(alloc_init(1LL * kQkv * kHidden, kHidden, 100 + 4 * l));
    m.o.push_back(alloc_init(1LL * kHidden * kHidden, kHidden, 101 + 4 * l));
    m.gu.push_back(alloc_init(2LL * kInter * kHidden, kHidden, 102 + 4 * l));
    m.down.push_back(alloc_init(1LL * kHidden * kInter, kInter, 103 + 4 * l));
  }
  m.lm = alloc_init(1LL * kVocab * kHidden, kHidden, 7);
  for (int l = 0; l <= kLayers; ++l) {
    m.h.push_back(alloc_init(kHidden, 3, 9 + l));  // entries in [-1, 1]; h[0] is the input
    m.q.push_back(alloc_init(kQkv, 3, 0));
    m.h2.push_back(alloc_init(kHidden, 3, 0));
    m.act.push_back(alloc_init(kInter, 3, 0));
  }
  CK(cudaMalloc(&m.logits, kVocab * 4));
  __nv_bfloat16* xn;
  float* rows;
  unsigned* bar;
  CK(cudaMalloc(&xn, kMaxK * 2));
  CK(cudaMalloc(&rows, 2LL * kVocab * 4));
  CK(cudaMalloc(&bar, 4));
  const double weight_bytes = 2.0 * kLayers * (1.0 * kQkv * kHidden + 1.0 * kHidden * kHidden +
                                               2.0 * kInter * kHidden + 1.0 * kHidden * kInter) +
                              2.0 * kVocab * kHidden;

  CK(cudaMalloc(&m.hf, (kLayers + 1) * kHidden * 4));
  const std::vector<Phase> ph = build_phases(m, kLayers), phd = build_phases(m, kLayers, true);
  const int n = static_cast<int>(ph.size());
  Phase *d_ph, *d_phd;
  unsigned* counters;
  CK(cudaMalloc(&d_ph, n * sizeof(Phase)));
  CK(cudaMalloc(&d_phd, n * sizeof(Phase)));
  CK(cudaMalloc(&counters, 2 * n * 4));
  CK(cudaMemcpy(d_ph, ph.data(), n * sizeof(Phase), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_phd, phd.data(), n * sizeof(Phase), cudaMemcpyHostToDevice));

  // Correctness: run the whole chain, then check every phase against the reference fed the same input; for both
  // static chunk geometries (16 KB: two rows / half a down row; 8 KB: one row / a quarter) and the dynamic kernel.
  {
    void* ref_out;
    CK(cudaMalloc(&ref_out, kVocab * 4));
    bool ok = true;
    const char* names[4] = {"static, 8 x 16 KB ring", "static, 8 x 8 KB ring, 2 blocks/SM, 2 producer lanes",
                            "dynamic, 8 x 16 KB ring, 8 warps, grab 4, slot released after the dots",
                            "dynamic, 12 x 16 KB ring, 6 warps, grab 1, registers staged"};
    for (int variant = 0; variant < 4; ++variant) {
      if (variant == 0)
        run_chain<8, 16384, true>(d_ph, n, bar, sms, 0);
      else if (variant == 1)
        run_chain<8, 8192, true, 2>(d_ph, n, bar, 2 * sms, 0);
      else if (variant == 2)
        run_dyn<8, 16384, 4, 8, false>(d_phd, n, counters, m.hf, sms, 0);
      else
        run_dyn<12, 16384, 1, 6>(d_phd, n, counters, m.hf, sms, 0);
      CK(cudaDeviceSynchronize());
      const std::vector<Phase>& checked = variant >= 2 ? phd : ph;
      float worst = 0.f;
      int worst_at = -1;
      for (int i = 0; i < n; ++i) {
        const Phase& p = checked[i];
        run_reference(p, xn, rows, ref_out);
        const std::vector<float> got = to_host(p.out, p.n, p.out_f32), want = to_host(ref_out, p.n, p.out_f32);
        const float err = max_rel_err(got.data(), want.data(), p.n);
        if (err > worst) worst = err, worst_at = i;
      }
      ok = ok && worst < 2e-2f;
      std::printf("check %s, %d phases: worst max |diff| / max |ref| = %.2e (phase %d) %s\n", names[variant], n,
                  worst, worst_at, worst < 2e-2f ? "OK" : "FAIL");
    }
    CK(cudaFree(ref_out));
    if (!ok) return 1;
  }

  // Bandwidth anchors: device copy and a streaming read of the weights' size.
  float copy_ms = 0.f, read_ms = 0.f;
  {
    const long long n = 2LL << 30;  // 2 GiB copied
    void *a, *c;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&c, n));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int it = 0; it < 3; ++it) {
      CK(cudaEventRecord(e0));
      CK(cudaMemcpyAsync(c, a, n, cudaMemcpyDeviceToDevice));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      CK(cudaEventElapsedTime(&copy_ms, e0, e1));
    }
    const double copy_tbs = 2.0 * n / (copy_ms * 1e-3) / 1e12;
    for (int it = 0; it < 3; ++it) {
      CK(cudaEventRecord(e0));
      read_bw<<<sms * 8, 512>>>(static_cast<const uint4*>(a), n / 16, bar);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      CK(cudaEventElapsedTime(&read_ms, e0, e1));
    }
    const double read_tbs = 1.0 * n / (read_ms * 1e-3) / 1e12;
    std::printf("copy %.3f TB/s, read %.3f TB/s\n", copy_tbs, read_tbs);
    std::printf("weights %.3f GB: floor %.3f ms at copy bw, %.3f ms at read bw\n", weight_bytes / 1e9,
                weight_bytes / (copy_tbs * 1e12) * 1e3, weight_bytes / (read_tbs * 1e12) * 1e3);
    CK(cudaFree(a));
    CK(cudaFree(c));
  }

  Table table;
  auto add = [&](const char* name, float ms) { table.add(name, ms); };
  add("static, 8 x 16 KB ring", run_chain<8, 16384, true>(d_ph, n, bar, sms, 5));
  add("static, 8 x 16 KB ring, one launch per phase (graph)", run_per_phase<8, 16384, true>(d_ph, n, bar, sms, 5));
  add("static, 8 x 8 KB ring, 2 blocks/SM", run_chain<8, 8192, true>(d_ph, n, bar, 2 * sms, 5));
  add("dynamic, 8 x 16 KB, 8 warps, grab 1, slot released after the dots",
      run_dyn<8, 16384, 1, 8, false>(d_phd, n, counters, m.hf, sms, 5));
  add("dynamic, 8 x 16 KB, 8 warps, grab 1, registers staged",
      run_dyn<8, 16384, 1, 8>(d_phd, n, counters, m.hf, sms, 5));
  add("dynamic, 8 x 16 KB, 8 warps, grab 4, registers staged",
      run_dyn<8, 16384, 4, 8>(d_phd, n, counters, m.hf, sms, 5));
  add("dynamic, 12 x 16 KB, 6 warps, grab 1, registers staged",
      run_dyn<12, 16384, 1, 6>(d_phd, n, counters, m.hf, sms, 5));
  add("  the same, no barrier wait (timing only)", run_dyn<12, 16384, 1, 6>(d_phd, n, counters, m.hf, sms, 5, 1));
  add("  the same, no input load (timing only)", run_dyn<12, 16384, 1, 6>(d_phd, n, counters, m.hf, sms, 5, 2));
  add("  the same, no dot products (timing only)", run_dyn<12, 16384, 1, 6>(d_phd, n, counters, m.hf, sms, 5, 4));
  add("dynamic, 12 x 16 KB, 6 warps, grab 1, registers staged (again)",
      run_dyn<12, 16384, 1, 6>(d_phd, n, counters, m.hf, sms, 5));
  table.print("variant (1 block per SM unless noted)", "chain ms (32 layers + LM head)", weight_bytes);
  return 0;
}
