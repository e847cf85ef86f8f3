// Argument blocks of every kernel, shared by the CPU kernels (csrc/cpu), the CUDA launchers and bindings.cpp.
// Torch-free on purpose: bindings.cpp validates the tensors and fills these with raw pointers, sizes and
// element strides; the kernels trust them. Strides are in elements; the last (head) dim is always contiguous.
#pragma once

#include <cstdint>

#include "common.h"

namespace lite_srt {

// rmsnorm (residual == nullptr): out = norm(x) * w.
// fused_add_rmsnorm (residual != nullptr): residual += x; x = norm(residual) * w, so out aliases x.
struct RmsNormArgs {
  void* out;
  int64_t out_stride;
  const void* x;
  int64_t x_stride;
  void* residual;
  int64_t residual_stride;
  const void* weight;
  DType weight_dtype;  // the activation dtype, or float32
  DType dtype;
  int64_t rows;
  int64_t hidden;
  float eps;
};

// out[t, i] = silu(x[t, i]) * x[t, inter + i].
struct SiluAndMulArgs {
  void* out;
  int64_t out_stride;
  const void* x;
  int64_t x_stride;
  int64_t rows;
  int64_t inter;
  DType dtype;
};

// In-place RoPE on q [T, Hq, D] and k [T, Hkv, D]; cos_sin is float32 [max_pos, D] = cos(D/2) | sin(D/2).
struct RopeArgs {
  IndexArray positions;
  void* q;
  Strides3 q_stride;
  void* k;
  Strides3 k_stride;
  const float* cos_sin;
  int64_t max_pos;
  int64_t tokens;
  int64_t q_heads;
  int64_t kv_heads;
  int64_t head_dim;
  bool is_neox;
  DType dtype;
};

// k_cache[slots[t]] = k[t] (same for v); slots[t] < 0 marks a padded entry that is skipped.
struct StoreKVArgs {
  void* k_cache;
  Strides3 k_cache_stride;
  void* v_cache;
  Strides3 v_cache_stride;
  int64_t num_slots;
  IndexArray slots;
  const void* k;
  Strides3 k_stride;
  const void* v;
  Strides3 v_stride;
  int64_t tokens;
  int64_t kv_heads;
  int64_t head_dim;
  DType dtype;
};

// Paged attention over the pool. Decode: one query row per request (extend_lens/extend_start_loc unused).
// Extend: request b owns query rows [extend_start_loc[b], + extend_lens[b]), its last extend_lens[b] positions.
struct AttentionArgs {
  void* out;
  Strides3 out_stride;
  const void* q;
  Strides3 q_stride;
  const void* k_cache;
  Strides3 k_stride;
  const void* v_cache;
  Strides3 v_stride;
  int64_t num_slots;
  IndexArray req_to_token;
  int64_t req_to_token_stride;
  int64_t req_to_token_cols;
  int64_t req_to_token_rows;
  IndexArray req_pool_indices;
  IndexArray seq_lens;
  IndexArray extend_lens;
  IndexArray extend_start_loc;
  int64_t batch;
  int64_t tokens;
  int64_t q_heads;
  int64_t kv_heads;
  int64_t head_dim;
  float scale;
  DType dtype;
};

// Decode only: the step's key counts, so decode attention can cut long requests into more key splits than short
// ones (decode.cu, balanced_splits). total_keys / max_keys: the sum and the largest of the rows' key counts, known
// on the host; max_keys = 0: the one-wave plan alone. chunk_keys ([1] on the device, or null): the step's keys per
// split, which a captured graph reads at each replay; the grid was then sized from max_keys at capture.
struct DecodeBalance {
  int64_t total_keys = 0;
  int64_t max_keys = 0;
  IndexArray chunk_keys{nullptr, true};
};

// Decode over shared prefixes (cascade): the batch rows [group_start[g], group_start[g] + group_size[g]) share
// their first shared_lens[row] keys (the same pool slots). A group's shared keys are attended once for all its
// rows, and each row then attends only its own keys [shared_lens[row], seq_len); the partials merge by
// log-sum-exp. Built by the scheduler (lite_srt/engine/prefix_groups.py), which keeps shared_lens a multiple of
// 64 and below each row's sequence length.
struct CascadeArgs {
  IndexArray shared_lens;  // [batch]; 0 = the row is in no group
  IndexArray group_start;  // [num_groups]
  IndexArray group_size;   // [num_groups], each >= 1
  int64_t num_groups;
  int64_t max_shared;  // the longest shared length (sizes the split of the shared keys)
  int64_t max_group;   // the largest group (sizes the blocks' row chunks)
  int64_t shared_splits;  // splits of the shared keys (blocks launched); 0 = chosen from the groups
  // [1] on the device, or null: the splits of this step, at most shared_splits. A captured graph launches
  // shared_splits blocks per (group, head) and reads the step's count here; blocks past it write empty partials.
  IndexArray split_count;
};

}  // namespace lite_srt
