// Launchers of the paged attention kernels (decode.cu, extend.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../kernel_args.h"

namespace lite_srt {

// Scratch bytes launch_decode_attention needs for its split-K partials (0 when it does not split).
// `cascade` (may be null) groups rows that share a prefix; kernels without a cascade path ignore it.
int64_t decode_attention_workspace_bytes(const AttentionArgs& a, const CascadeArgs* cascade);
void launch_decode_attention(const AttentionArgs& a, const CascadeArgs* cascade, void* workspace,
                             cudaStream_t stream);
void launch_extend_attention(const AttentionArgs& a, cudaStream_t stream);

// Splits of a cascade's shared keys for a step with these groups on the current device (what an eager launch
// picks; captured graphs write it to CascadeArgs::split_count each step).
int decode_cascade_splits(int64_t q_heads, int64_t kv_heads, int64_t num_groups, int64_t max_group,
                          int64_t max_shared);

}  // namespace lite_srt
