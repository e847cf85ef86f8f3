// One-shot all-reduce between the GPUs of one machine over CUDA IPC (all_reduce.cu). Torch-free: bindings.cpp
// validates the tensor and fills AllReduceArgs; lite_srt/distributed/custom_all_reduce.py owns the buffers.
//
// Why not NCCL: a decode step at tensor-parallel size N does two all-reduces per layer on a few KB each, where
// NCCL's fixed cost dominates, and torch.distributed's NCCL collectives hung when replayed from a CUDA graph.
// This kernel is a plain kernel on the caller's stream, so it is captured and replayed like any other.
//
// Protocol, per call and per block b (every rank runs the same calls with the same sizes, and every call
// launches the same kArBlocks blocks, so block b of rank r always meets block b of every peer):
//   1. epoch = ++own.epochs[b]  (a counter in device memory, so graph replays advance it too; equal for every
//      block, since every block runs in every call)
//   2. copy this block's share of the input into own.data[epoch & 1]
//   3. store epoch into peer.flags[b][rank] for every peer; wait until own.flags[b][p] has reached epoch for
//      every p (all peers have written their share)
//   4. sum the share over every rank's data[epoch & 1], in rank order, into the input (in place)
// The two data buffer halves alternate, so a rank that has moved on to the next call writes the other half
// while slower peers still read this one. It cannot get two calls ahead: passing step 3 of call k+1 means every
// peer has started call k+1, so (calls being stream-ordered kernels) every peer has finished reading call k.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../common.h"

namespace lite_srt {

constexpr int kArMaxRanks = 8;
constexpr int kArBlocks = 64;  // the grid of every call
// Bytes before the data buffers: flags[kArBlocks][kArMaxRanks] and epochs[kArBlocks] (uint32), padded.
constexpr size_t kArHeaderBytes = 4096;
static_assert((kArBlocks * kArMaxRanks + kArBlocks) * sizeof(uint32_t) <= kArHeaderBytes, "header");

// Bytes of one rank's IPC buffer for a data capacity of `capacity` bytes per call.
inline size_t ar_buffer_bytes(size_t capacity) { return kArHeaderBytes + 2 * capacity; }

struct AllReduceArgs {
  void* data;                    // [numel] contiguous, 16-byte aligned; input and output
  int64_t numel;                 // numel * element size: a multiple of 16 and at most capacity
  DType dtype;
  void* buffers[kArMaxRanks];    // every rank's IPC buffer, mapped into this process (own one at [rank])
  int rank;
  int nranks;                    // 2..kArMaxRanks
  int64_t capacity;              // data bytes per buffer half
};

void launch_all_reduce(const AllReduceArgs& a, cudaStream_t stream);

// Buffer management (plain CUDA runtime calls, kept here so bindings.cpp needs no CUDA runtime includes).
// Each returns the CUDA error code; kIpcHandleBytes is sizeof(cudaIpcMemHandle_t).
constexpr size_t kIpcHandleBytes = 64;
cudaError_t ar_alloc(size_t bytes, void** ptr);  // zero-filled device memory
cudaError_t ar_free(void* ptr);
cudaError_t ar_ipc_handle(void* ptr, char* handle_out);
cudaError_t ar_ipc_open(const char* handle, void** ptr);
cudaError_t ar_ipc_close(void* ptr);

}  // namespace lite_srt
