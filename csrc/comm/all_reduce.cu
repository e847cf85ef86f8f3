// One-shot all-reduce over CUDA IPC buffers; the protocol is described in all_reduce.h.
#include <cstring>

#include "../cuda_utils.cuh"
#include "all_reduce.h"

namespace lite_srt {
namespace {

constexpr int kThreads = 512;

// Loads peer memory without keeping it in L1: the same addresses are rewritten by the peer between calls.
__device__ __forceinline__ uint4 load_uncached(const uint4* p) {
#if defined(USE_ROCM) || defined(__HIP_PLATFORM_AMD__)
  return *reinterpret_cast<const volatile uint4*>(p);
#else
  return __ldcg(p);
#endif
}

// Tells every peer that this block's share is in place, then waits until every peer has said the same.
template <int N>
__device__ __forceinline__ void block_barrier(void* const (&buffers)[kArMaxRanks], int rank, uint32_t* own_flags,
                                              uint32_t epoch) {
  __syncthreads();  // the whole block's share is written
  if (threadIdx.x < N) {
    __threadfence_system();  // ... and visible to the peers before they can see the flag
    uint32_t* peer_flags = static_cast<uint32_t*>(buffers[threadIdx.x]);
    *reinterpret_cast<volatile uint32_t*>(peer_flags + blockIdx.x * kArMaxRanks + rank) = epoch;
    const volatile uint32_t* flag = own_flags + blockIdx.x * kArMaxRanks + threadIdx.x;
    // Signed difference: a peer already in the next call has stored epoch + 1, and the counter may wrap.
    while (static_cast<int32_t>(*flag - epoch) < 0) {
    }
    __threadfence_system();  // the peer's data is read only after its flag
  }
  __syncthreads();
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) all_reduce_kernel(AllReduceArgs a) {
  using P = Pack16<T>;
  constexpr int E = P::kElems;
  char* own = static_cast<char*>(a.buffers[a.rank]);
  uint32_t* flags = reinterpret_cast<uint32_t*>(own);
  uint32_t* epochs = flags + kArBlocks * kArMaxRanks;

  __shared__ uint32_t s_epoch;
  if (threadIdx.x == 0) {  // only this thread of this block ever touches epochs[blockIdx.x]
    s_epoch = epochs[blockIdx.x] + 1;
    epochs[blockIdx.x] = s_epoch;
  }
  __syncthreads();
  const uint32_t epoch = s_epoch;
  const size_t offset = kArHeaderBytes + static_cast<size_t>(epoch & 1u) * static_cast<size_t>(a.capacity);

  const int64_t nvec = a.numel / E;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  uint4* io = static_cast<uint4*>(a.data);
  uint4* staged = reinterpret_cast<uint4*>(own + offset);
  for (int64_t i = first; i < nvec; i += stride) staged[i] = io[i];

  block_barrier<N>(a.buffers, a.rank, flags, epoch);

  const uint4* src[N];
#pragma unroll
  for (int r = 0; r < N; ++r) src[r] = reinterpret_cast<const uint4*>(static_cast<const char*>(a.buffers[r]) + offset);
  for (int64_t i = first; i < nvec; i += stride) {
    // Every rank adds in rank order, so every rank gets bit-identical sums.
    float acc[E];
    P v;
    v.raw = load_uncached(src[0] + i);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = to_float(v[e]);
#pragma unroll
    for (int r = 1; r < N; ++r) {
      v.raw = load_uncached(src[r] + i);
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] += to_float(v[e]);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = from_float<T>(acc[e]);
    io[i] = v.raw;
  }
}

template <typename T>
void launch_typed(const AllReduceArgs& a, int blocks, cudaStream_t stream) {
  switch (a.nranks) {
#define LSRT_AR_CASE(n)                                                \
  case n:                                                              \
    all_reduce_kernel<T, n><<<blocks, kThreads, 0, stream>>>(a);       \
    break;
    LSRT_AR_CASE(2)
    LSRT_AR_CASE(3)
    LSRT_AR_CASE(4)
    LSRT_AR_CASE(5)
    LSRT_AR_CASE(6)
    LSRT_AR_CASE(7)
    LSRT_AR_CASE(8)
#undef LSRT_AR_CASE
    default:
      throw std::runtime_error("all_reduce: nranks must be in [2, 8], got " + std::to_string(a.nranks));
  }
}

}  // namespace

void launch_all_reduce(const AllReduceArgs& a, cudaStream_t stream) {
  // Always the full grid, even for a few KB: each block's epoch then counts every call, so all blocks of a call
  // use the same buffer half and consecutive calls alternate (see all_reduce.h).
  dispatch_cuda_dtype(a.dtype, [&](auto t) { launch_typed<decltype(t)>(a, kArBlocks, stream); });
  check_launch("all_reduce");
}

cudaError_t ar_alloc(size_t bytes, void** ptr) {
  cudaError_t err = cudaMalloc(ptr, bytes);
  if (err != cudaSuccess) return err;
  err = cudaMemset(*ptr, 0, bytes);
  if (err != cudaSuccess) return err;
  return cudaDeviceSynchronize();  // zeroed before any peer can map it
}

cudaError_t ar_free(void* ptr) { return cudaFree(ptr); }

cudaError_t ar_ipc_handle(void* ptr, char* handle_out) {
  static_assert(sizeof(cudaIpcMemHandle_t) == kIpcHandleBytes, "IPC handle size");
  cudaIpcMemHandle_t h;
  const cudaError_t err = cudaIpcGetMemHandle(&h, ptr);
  if (err == cudaSuccess) std::memcpy(handle_out, &h, sizeof(h));
  return err;
}

cudaError_t ar_ipc_open(const char* handle, void** ptr) {
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle, sizeof(h));
  return cudaIpcOpenMemHandle(ptr, h, cudaIpcMemLazyEnablePeerAccess);
}

cudaError_t ar_ipc_close(void* ptr) { return cudaIpcCloseMemHandle(ptr); }

}  // namespace lite_srt
