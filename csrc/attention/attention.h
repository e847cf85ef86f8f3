// Launchers of the paged attention kernels (decode.cu, extend.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "../kernel_args.h"

namespace lite_srt {

// Zeroed int32 counters the decode kernel uses to merge its key splits in the kernel (the last block of a
// (request, KV head) merges; every counter is back to zero when the launch ends). At least batch x KV heads x
// head chunks of them, owned by the caller for as long as any captured graph uses them, one set per concurrently
// running launch. ptr == nullptr (or too few): a separate merge kernel runs instead.
struct MergeCounters {
  int* ptr = nullptr;
  int64_t len = 0;
};

// Scratch bytes launch_decode_attention needs for its split-K partials (0 when it does not split).
// `cascade` (may be null) groups rows that share a prefix; kernels without a cascade path ignore it.
// `bal`: the step's key counts, for balanced key splits (kernel_args.h); the same for both calls.
int64_t decode_attention_workspace_bytes(const AttentionArgs& a, const CascadeArgs* cascade,
                                         const DecodeBalance& bal = {});
void launch_decode_attention(const AttentionArgs& a, const CascadeArgs* cascade, void* workspace,
                             const MergeCounters& counters, cudaStream_t stream, const DecodeBalance& bal = {});
void launch_extend_attention(const AttentionArgs& a, cudaStream_t stream);

// The decode kernel's key splits for a batch (the one-wave base, the keys per split, the grid's splits) on the
// current device; a CUDA-graph runner uses it to pick the graph a step needs and the chunk_keys it reads.
struct DecodeSplitPlan {
  int64_t base, chunk, splits;
};
DecodeSplitPlan decode_split_plan(int64_t q_heads, int64_t kv_heads, int64_t batch, int64_t total_keys,
                                  int64_t max_keys);

// Splits of a cascade's shared keys for a step with these groups on the current device (what an eager launch
// picks; captured graphs write it to CascadeArgs::split_count each step).
int decode_cascade_splits(int64_t q_heads, int64_t kv_heads, int64_t num_groups, int64_t max_group,
                          int64_t max_shared);

// Which kernel runs a cascade's shared pass for this dtype and head dim on the current device: "wgmma" (Hopper,
// sm_90a build), "mma" (other tensor-core GPUs, or LITE_SRT_CASCADE_KERNEL=mma) or "none" (float32, ROCm: no
// cascade).
std::string decode_cascade_shared_kernel(DType dtype, int64_t head_dim);

}  // namespace lite_srt
