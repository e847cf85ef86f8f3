// Small-batch GEMV: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), M = 1..8, bf16/fp16 in and out, float32 sums.
//
// At decode the weights are read exactly once per step and dominate the bytes moved, so the kernel is built to
// stream W at copy bandwidth:
//  - each warp owns kRowsPerWarp rows of W; each lane reads 16-byte packs of those rows, WARP_SIZE lanes side by
//    side (coalesced 512-byte segments per row);
//  - the loads of one chunk (kRowsPerWarp x kUnroll packs per lane) are issued together, and the next chunk's
//    loads are issued before the current chunk's FMAs (register double buffer), so a warp always has bytes in
//    flight, across the x-tile barriers too;
//  - W goes through the non-coherent path without L1 allocation (read once; it would only evict x);
//  - x (or silu(a) * b for the fused down projection) is staged once per block in shared memory, in K tiles
//    small enough for several blocks per SM, and shared by every row of the block;
//  - each row's partial sums are reduced with warp shuffles; one lane per (row, m) writes the output.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "../cuda_utils.cuh"
#include "../launch.cuh"
#include "gemv.h"

namespace lite_srt {
namespace {

constexpr int kWarps = 4;                 // warps per block
constexpr int kPackElems = 8;             // 16 bytes of a 2-byte type
constexpr int kStep = WARP_SIZE * kPackElems;  // K elements one warp covers with one pack per lane
constexpr int kMaxTileElems = 16384;      // M * tile_k <= this: 32 KB of x per block, several blocks per SM
// The fused input costs two loads and a silu per element to stage: smaller tiles spread that work over the
// kernel (blocks on one SM stage at different times) instead of stalling every block at its start.
constexpr int kMaxTileElemsFused = 4096;

// Read-once stream of W: skip L1 and ask L2 for whole 256-byte sectors (sm_80+). Other targets, ROCm included,
// use the read-only path.
__device__ __forceinline__ uint4 load_stream(const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(USE_ROCM)
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
#else
  return __ldg(reinterpret_cast<const uint4*>(p));
#endif
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&f)[kPackElems]) {
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int e = 0; e < kPackElems; ++e) f[e] = to_float(v[e]);
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// Layout of the K loop, uniform over the grid: K is walked in chunks of kUnroll steps of kStep elements, and
// the x tile staged in shared memory holds chunks_per_tile chunks.
struct KLoop {
  int chunks;
  int chunks_per_tile;
  int tile_k;  // elements of K per x tile = chunks_per_tile * kUnroll * kStep
};

// Stages in(m, k) for k in [k0, k0 + tile_k) into xs[m][k - k0]; zero past K so tail packs add nothing.
template <typename T, int M, bool FUSE>
__device__ __forceinline__ void stage_x(const GemvArgs& a, T* xs, int64_t k0, int tile_k) {
  const T* x = static_cast<const T*>(a.x);
  const int packs_per_row = tile_k / kPackElems;
  for (int p = threadIdx.x; p < M * packs_per_row; p += blockDim.x) {
    const int m = p / packs_per_row;
    const int kk = (p - m * packs_per_row) * kPackElems;
    const int64_t k = k0 + kk;
    Pack16<T> v;
    v.raw = make_uint4(0, 0, 0, 0);
    if (k < a.k) {
      const T* row = x + m * a.x_stride;
      v = load_pack(row + k);
      if constexpr (FUSE) {
        // Rounded to T like silu_and_mul's output, so fused and two-step paths see the same input.
        const Pack16<T> up = load_pack(row + a.k + k);
#pragma unroll
        for (int e = 0; e < kPackElems; ++e) v[e] = from_float<T>(silu_mul(to_float(v[e]), to_float(up[e])));
      }
    }
    store_pack(xs + m * tile_k + kk, v);
  }
}

template <int kRowsPerWarp, int kUnroll>
__device__ __forceinline__ void load_chunk(const char* const (&rows)[kRowsPerWarp], int64_t k_bytes, int c,
                                           int lane, uint4 (&w)[kRowsPerWarp][kUnroll]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t off = (static_cast<int64_t>(c * kUnroll + u) * kStep + lane * kPackElems) * 2;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      w[r][u] = off < k_bytes ? load_stream(rows[r] + off) : make_uint4(0, 0, 0, 0);
    }
  }
}

template <typename T, int M, bool FUSE, int kRowsPerWarp, int kUnroll>
__global__ void __launch_bounds__(kWarps* WARP_SIZE) gemv_kernel(GemvArgs a, KLoop loop) {
  extern __shared__ uint4 smem_raw[];
  T* xs = reinterpret_cast<T*>(smem_raw);
  const int lane = threadIdx.x % WARP_SIZE;
  const int warp = threadIdx.x / WARP_SIZE;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;

  // Rows past N read row N-1 (valid memory, same traffic pattern) and are never stored.
  const char* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    rows[r] = static_cast<const char*>(a.weight) + std::min<int64_t>(row0 + r, a.n - 1) * a.k * 2;
  }
  const int64_t k_bytes = a.k * 2;

  float acc[kRowsPerWarp][M];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
  }

  // The first chunk's loads go out before x is staged: staging then overlaps their latency. Weights are never
  // written by a kernel, so under PDL these loads also overlap the end of the previous kernel.
  uint4 cur[kRowsPerWarp][kUnroll];
  load_chunk<kRowsPerWarp, kUnroll>(rows, k_bytes, 0, lane, cur);
  pdl_wait();
  pdl_launch_dependents();

  for (int c = 0; c < loop.chunks; ++c) {
    const int c_in_tile = c % loop.chunks_per_tile;
    if (c_in_tile == 0) {
      __syncthreads();  // every warp is done with the previous tile
      stage_x<T, M, FUSE>(a, xs, static_cast<int64_t>(c / loop.chunks_per_tile) * loop.tile_k, loop.tile_k);
      __syncthreads();
    }
    uint4 next[kRowsPerWarp][kUnroll];
    if (c + 1 < loop.chunks) load_chunk<kRowsPerWarp, kUnroll>(rows, k_bytes, c + 1, lane, next);

#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float wf[kRowsPerWarp][kPackElems];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) unpack<T>(cur[r][u], wf[r]);
      const int kk = (c_in_tile * kUnroll + u) * kStep + lane * kPackElems;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[kPackElems];
        unpack<T>(*reinterpret_cast<const uint4*>(xs + m * loop.tile_k + kk), xf);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
          for (int e = 0; e < kPackElems; ++e) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) cur[r][u] = next[r][u];
    }
  }

  T* out = static_cast<T*>(a.out);
  const T* bias = static_cast<const T*>(a.bias);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = row0 + r;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float sum = warp_reduce_sum(acc[r][m]);  // every lane holds the sum
      // Spread the stores over lanes rather than serializing them on lane 0.
      if (lane == (r * M + m) % WARP_SIZE && row < a.n) {
        out[m * a.out_stride + row] = from_float<T>(bias != nullptr ? sum + to_float(bias[row]) : sum);
      }
    }
  }
}

// Launch shapes: rows per warp x packs per row per chunk (1 x 8, 2 x 4, 4 x 2: 8 packs in flight per lane).
// More rows per warp reuse each x pack read from shared memory across more rows and make fewer, larger blocks.
// Blocks of one instantiation resident per SM (registers limit it; the x tile is at most 32 KB). Cached per
// instantiation: the query is not free and the answer depends only on the kernel and the device.
template <typename T, int M, bool FUSE, int kRowsPerWarp, int kUnroll>
int resident_blocks_per_sm() {
  static int cached = 0;
  if (cached == 0) {
    int blocks = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, gemv_kernel<T, M, FUSE, kRowsPerWarp, kUnroll>,
                                                  kWarps * WARP_SIZE, kMaxTileElems * sizeof(T));
    cached = std::max(1, blocks);
  }
  return cached;
}

// A grid that is a fraction of a wave over one more full wave leaves the GPU half idle at the end (every
// block streams the same bytes). Prefer 2 rows per warp (more warps, more loads in flight) when its grid fits
// in one wave or ends in a nearly full last wave; otherwise take whichever of 2 or 4 rows per warp wastes
// less of its last wave. Measured on H100 at M=1: qkv (N=6144) 22.9 us with 2 rows/warp, 20.6 with 4.
template <typename T, int M, bool FUSE>
int pick_rows_per_warp(int64_t n) {
  // LITE_SRT_GEMV_VARIANT=<rows_per_warp> (1, 2 or 4) forces a shape, for A/B runs in scripts/bench_gemv.py.
  if (const char* env = std::getenv("LITE_SRT_GEMV_VARIANT")) {
    const int r = std::atoi(env);
    if (r == 1 || r == 2 || r == 4) return r;
  }
  // From 3 rows the FMAs and shared-memory reads of x, not the loads, limit the kernel: 4 rows per warp reuse
  // each x pack for more rows (H100, M=8: 2.3x the throughput of 2 rows per warp on gate_up).
  if (M >= 3) return 4;
  const double slots = static_cast<double>(current_num_sms()) * resident_blocks_per_sm<T, M, FUSE, 2, 4>();
  auto last_wave_use = [&](int rows_per_warp) {
    const double waves = static_cast<double>(ceil_div(n, kWarps * rows_per_warp)) / slots;
    return waves <= 1.0 ? 1.0 : waves / std::ceil(waves);
  };
  const double use2 = last_wave_use(2);
  return use2 >= 0.9 || use2 >= last_wave_use(4) ? 2 : 4;
}

template <typename T, int M, bool FUSE, int kRowsPerWarp, int kUnroll>
void launch_shape(const GemvArgs& a, cudaStream_t stream) {
  constexpr int kChunkK = kUnroll * kStep;
  KLoop loop{};
  loop.chunks = static_cast<int>(ceil_div(a.k, kChunkK));
  const int max_tile = FUSE ? kMaxTileElemsFused : kMaxTileElems;
  loop.chunks_per_tile = std::max(1, std::min(loop.chunks, max_tile / (M * kChunkK)));
  loop.tile_k = loop.chunks_per_tile * kChunkK;
  const size_t smem = static_cast<size_t>(M) * loop.tile_k * sizeof(T);
  const int64_t rows_per_block = static_cast<int64_t>(kWarps) * kRowsPerWarp;
  const dim3 grid(static_cast<unsigned>(ceil_div(a.n, rows_per_block)));
  launch_kernel(gemv_kernel<T, M, FUSE, kRowsPerWarp, kUnroll>, grid, kWarps * WARP_SIZE, smem, stream, a, loop);
}

template <typename T, int M, bool FUSE>
void launch_rows(const GemvArgs& a, cudaStream_t stream) {
  const int rows_per_warp = pick_rows_per_warp<T, M, FUSE>(a.n);
  if (rows_per_warp == 1) {
    launch_shape<T, M, FUSE, 1, 8>(a, stream);
  } else if (rows_per_warp == 2) {
    launch_shape<T, M, FUSE, 2, 4>(a, stream);
  } else {
    launch_shape<T, M, FUSE, 4, 2>(a, stream);
  }
}

template <typename T, bool FUSE>
void launch_fused(const GemvArgs& a, cudaStream_t stream) {
  switch (a.rows) {
    case 1: launch_rows<T, 1, FUSE>(a, stream); break;
    case 2: launch_rows<T, 2, FUSE>(a, stream); break;
    case 3: launch_rows<T, 3, FUSE>(a, stream); break;
    case 4: launch_rows<T, 4, FUSE>(a, stream); break;
    case 5: launch_rows<T, 5, FUSE>(a, stream); break;
    case 6: launch_rows<T, 6, FUSE>(a, stream); break;
    case 7: launch_rows<T, 7, FUSE>(a, stream); break;
    case 8: launch_rows<T, 8, FUSE>(a, stream); break;
    default: throw std::invalid_argument("gemv: rows must be 1..8, got " + std::to_string(a.rows));
  }
}

template <typename T>
void launch_typed(const GemvArgs& a, cudaStream_t stream) {
  if (a.fuse_silu_mul) {
    launch_fused<T, true>(a, stream);
  } else {
    launch_fused<T, false>(a, stream);
  }
}

}  // namespace

void launch_gemv(const GemvArgs& a, cudaStream_t stream) {
  if (a.n == 0) return;
  if (a.k == 0 || a.k % kPackElems != 0) {
    throw std::invalid_argument("gemv: K must be a positive multiple of 8, got " + std::to_string(a.k));
  }
  switch (a.dtype) {
    case DType::kFloat16:
      launch_typed<__half>(a, stream);
      break;
    case DType::kBFloat16:
      launch_typed<__nv_bfloat16>(a, stream);
      break;
    default:
      throw std::invalid_argument("gemv: dtype must be float16 or bfloat16");
  }
  check_launch("gemv");
}

}  // namespace lite_srt
