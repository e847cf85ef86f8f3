// Does the way the batch-1 weight stream is split across SMs decide how close it gets to HBM's read bandwidth?
//
// stream_chain.cu streams the Llama-3.1-8B linear chain (15.01 GB of bf16 weights) at 87-93% of the device's read
// bandwidth, with each block taking a fixed contiguous slice of every matrix. Here nothing is computed and no
// block waits for another: each block's producer lane streams 16 KB chunks through a shared-memory ring
// (cp.async.bulk, mbarriers) and its consumer warps only read the slots back. What changes is who gets which
// chunk of each matrix (matrices in chain order, 129 of them):
//   contiguous   block b takes a fixed 1/g of the matrix (stream_chain's split)
//   interleaved  block b takes chunks b, b + g, b + 2g, ...
//   dynamic      blocks grab the next `grab` chunks from a per-matrix counter until it runs out, so a block on a
//                slower path to memory simply takes fewer
// Also timed: the grid-stride read kernel once over a 2 GiB buffer and once per matrix from a CUDA graph.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a scripts/cuda/stream_read.cu -o /tmp/stream_read
//   /tmp/stream_read             # a table last
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "bulk_ring.cuh"

namespace {

using namespace bulk;

constexpr int kWarps = 8;
constexpr int kThreads = (kWarps + 1) * 32;  // + the producer warp (the last)

enum Mode : int { kContiguous = 0, kInterleaved = 1, kDynamic = 2 };

struct Seg {
  const unsigned char* p;
  long long bytes;  // a multiple of the chunk size
};

// Slot s always goes to consumer warp s % 8 (kStages is a multiple of 8); a slot whose meta is -1 ends the warp.
template <int kStages, int kChunk, int kMode, int kGrab>
__global__ void __launch_bounds__(kThreads, 1)
    stream_kernel(const Seg* __restrict__ segs, int nseg, unsigned* __restrict__ ctr, unsigned* sink) {
  static_assert(kStages % kWarps == 0, "a slot must belong to one consumer warp");
  extern __shared__ __align__(1024) unsigned char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kChunk);
  uint64_t* empty = full + kStages;
  int* meta = reinterpret_cast<int*>(empty + kStages);
  const int g = gridDim.x, b = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  init_ring(full, empty, kStages);

  if (warp == kWarps) {
    if (lane != 0) return;
    const uint64_t policy = evict_first_policy();
    SlotCursor slots{empty, kStages};
    auto push = [&](const unsigned char* src) {
      const unsigned s = slots.next();
      meta[s] = 1;
      mbar_expect_tx(&full[s], kChunk);
      bulk_load<true>(smem + s * kChunk, src, kChunk, &full[s], policy);
    };
    for (int i = 0; i < nseg; ++i) {
      const Seg sg = segs[i];
      const long long n = sg.bytes / kChunk;
      if constexpr (kMode == kContiguous) {
        for (long long c = n * b / g; c < n * (b + 1) / g; ++c) push(sg.p + c * kChunk);
      } else if constexpr (kMode == kInterleaved) {
        for (long long c = b; c < n; c += g) push(sg.p + c * kChunk);
      } else {
        for (;;) {
          const long long c0 = atomicAdd(&ctr[i], static_cast<unsigned>(kGrab));
          if (c0 >= n) break;
          for (long long c = c0; c < c0 + kGrab && c < n; ++c) push(sg.p + c * kChunk);
        }
      }
    }
    for (int w = 0; w < kWarps; ++w) {
      const unsigned s = slots.next();
      meta[s] = -1;
      mbar_arrive(&full[s]);
    }
    return;
  }

  uint32_t acc = 0;
  for (unsigned j = warp;; j += kWarps) {
    const unsigned s = j % kStages;
    mbar_wait(&full[s], (j / kStages) & 1);
    if (meta[s] < 0) break;
    const uint4* w = reinterpret_cast<const uint4*>(smem + s * kChunk);
    for (int i = lane; i < kChunk / 16; i += 32) {
      const uint4 v = w[i];
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }
  if (acc == 0x12345678u) *sink = acc;
}

template <int kStages, int kChunk, int kMode, int kGrab = 1>
float run_stream(const Seg* d_segs, int nseg, unsigned* ctr, unsigned* sink, int blocks, int iters) {
  auto kern = stream_kernel<kStages, kChunk, kMode, kGrab>;
  const int smem = kStages * kChunk + 2 * kStages * 8 + kStages * 4;
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  return best_ms(0, iters, [&] {
    CK(cudaMemsetAsync(ctr, 0, nseg * 4));
    kern<<<blocks, kThreads, smem>>>(d_segs, nseg, ctr, sink);
    CK(cudaGetLastError());
  });
}

// The grid-stride read once per matrix, replayed from a CUDA graph (separate kernels, no ring).
float run_read_per_seg(const std::vector<Seg>& segs, unsigned* sink, int blocks, int iters) {
  return graph_best_ms(iters, [&](cudaStream_t st) {
    for (const Seg& s : segs) read_bw<<<blocks, 512, 0, st>>>(reinterpret_cast<const uint4*>(s.p), s.bytes / 16, sink);
  });
}

}  // namespace

int main() {
  const int sms = print_device();
  constexpr long long kHidden = 4096, kQkv = 6144, kInter = 14336, kVocab = 128256;
  const long long sizes[4] = {kQkv * kHidden * 2, kHidden * kHidden * 2, 2 * kInter * kHidden * 2,
                              kHidden * kInter * 2};
  std::vector<Seg> segs;
  double total = 0;
  auto add_seg = [&](long long bytes) {
    unsigned char* p;
    CK(cudaMalloc(&p, bytes));
    CK(cudaMemset(p, 1, bytes));
    segs.push_back({p, bytes});
    total += bytes;
  };
  for (int l = 0; l < 32; ++l)
    for (long long b : sizes) add_seg(b);
  add_seg(kVocab * kHidden * 2);
  Seg* d_segs;
  unsigned *ctr, *sink;
  const int nseg = static_cast<int>(segs.size());
  CK(cudaMalloc(&d_segs, nseg * sizeof(Seg)));
  CK(cudaMemcpy(d_segs, segs.data(), nseg * sizeof(Seg), cudaMemcpyHostToDevice));
  CK(cudaMalloc(&ctr, nseg * 4));
  CK(cudaMalloc(&sink, 4));

  Table table;
  auto add = [&](const char* name, float ms) { table.add(name, ms); };
  {
    const long long n = 2LL << 30;
    unsigned char* a;
    CK(cudaMalloc(&a, n));
    CK(cudaMemset(a, 1, n));
    const float ms = best_ms(0, 3, [&] { read_bw<<<sms * 8, 512>>>(reinterpret_cast<const uint4*>(a), n / 16, sink); });
    std::printf("read %.3f TB/s over 2 GiB: floor %.3f ms for %.3f GB\n", n / (ms * 1e-3) / 1e12,
                total / (n / (ms * 1e-3)) * 1e3, total / 1e9);
    CK(cudaFree(a));
  }
  for (int round = 0; round < 2; ++round) {
    add("contiguous, 8 x 16 KB, 1 block/SM", run_stream<8, 16384, kContiguous>(d_segs, nseg, ctr, sink, sms, 5));
    add("interleaved, 8 x 16 KB, 1 block/SM", run_stream<8, 16384, kInterleaved>(d_segs, nseg, ctr, sink, sms, 5));
    add("dynamic grab 4, 8 x 16 KB, 1 block/SM", run_stream<8, 16384, kDynamic, 4>(d_segs, nseg, ctr, sink, sms, 5));
    add("dynamic grab 8, 8 x 16 KB, 1 block/SM", run_stream<8, 16384, kDynamic, 8>(d_segs, nseg, ctr, sink, sms, 5));
    add("dynamic grab 8, 16 x 8 KB, 1 block/SM", run_stream<16, 8192, kDynamic, 8>(d_segs, nseg, ctr, sink, sms, 5));
    add("contiguous, 8 x 8 KB, 2 blocks/SM", run_stream<8, 8192, kContiguous>(d_segs, nseg, ctr, sink, 2 * sms, 5));
    add("dynamic grab 8, 8 x 8 KB, 2 blocks/SM", run_stream<8, 8192, kDynamic, 8>(d_segs, nseg, ctr, sink, 2 * sms, 5));
    add("read kernel per matrix (graph), 4 blocks/SM", run_read_per_seg(segs, sink, 4 * sms, 5));
    add("read kernel per matrix (graph), 8 blocks/SM", run_read_per_seg(segs, sink, 8 * sms, 5));
  }
  char ms_col[64];
  std::snprintf(ms_col, sizeof ms_col, "ms for %.2f GB (%d SMs)", total / 1e9, sms);
  table.print("variant", ms_col, total);
  return 0;
}
