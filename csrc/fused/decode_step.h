// The batch-1 decode step of a Llama-architecture model in ONE persistent kernel (decode_step.cu), Hopper only.
// Torch-free: bindings.cpp validates the tensors and fills FusedDecodeArgs; lite_srt/engine/fused_decode.py
// decides when the step may take this path.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace lite_srt {

constexpr int kFusedHeadDim = 128;  // head_dim the kernel is built for
constexpr int kFusedMaxGroup = 4;   // query heads per KV head, at most
constexpr int kFusedSlotKeys = 32;   // keys whose K and V rows fill one 16 KB ring slot
constexpr int kFusedMaxSplits = 64;  // attention units per KV head, at most (one partial each)
constexpr int kFusedMaxKeys = kFusedSlotKeys * kFusedMaxSplits;  // longer contexts take the unfused step
// Ring slots one attention unit may span, at most (default; FusedDecodeArgs::unit_slots). Longer units mean
// fewer of them: one per block where the KV heads allow, instead of several back to back on its attention warp.
constexpr int kFusedUnitSlots = 4;

// One layer's device pointers; the kernel reads a [num_layers] array of these. Everything is bfloat16.
struct FusedLayer {
  const void* w_qkv;      // [(hq + 2 hkv) * D, hidden]: q rows, then k, then v
  const void* b_qkv;      // [(hq + 2 hkv) * D], or nullptr (Qwen2's qkv bias)
  const void* w_o;        // [hidden, hq * D]
  const void* w_gate_up;  // [2 * inter, hidden]: gate rows, then up rows
  const void* w_down;     // [hidden, inter]
  const void* ln_in;      // [hidden] input_layernorm weight
  const void* ln_post;    // [hidden] post_attention_layernorm weight
  void* k_cache;          // [slots + 1, hkv, D]
  void* v_cache;
};
static_assert(sizeof(FusedLayer) == 9 * sizeof(void*), "the binding fills it from a [layers, 9] int64 tensor");

struct FusedDecodeArgs {
  const FusedLayer* layers;  // device array
  int num_layers, hidden, inter, vocab, hq, hkv;
  float eps;    // RMSNorm epsilon
  float scale;  // attention softmax scale
  bool neox;    // RoPE pairs (i, i + D/2); else (2i, 2i + 1)
  const void* embed;       // [vocab, hidden]
  const void* final_norm;  // [hidden]
  const void* lm_head;     // [vocab, hidden] (the embedding when tied)
  // The step's one request (device scalars, so one CUDA graph serves every step).
  const int64_t* input_ids;
  const int64_t* positions;
  const int64_t* out_cache_loc;
  const int64_t* req_pool_indices;
  const int64_t* seq_lens;  // keys after this step, the new one included
  const int32_t* req_to_token;
  int64_t table_stride;
  const float* cos_sin;  // [max_pos, D]: cos of the D/2 frequencies, then their sin
  float* logits;         // [vocab] out
  int64_t* token;        // [1] out: the logits' argmax (the greedy token)
  int64_t* token_table;  // or nullptr: [rows] per-request next-token table; the argmax also lands at the request's row
  void* workspace;       // fused_decode_workspace_bytes()
  unsigned* counters;    // fused_decode_counters(); zeroed by the launcher before every step
  // Timing-only cuts (wrong results; scripts/bench_fused_decode.py): 1 no phase-barrier waits, 2 attention units
  // return at once, 4 no epilogue loads (residual, bias), 8 no input loads, 16 weight units skip the math,
  // 32 no split merge, 64 the attention warp frees its slots and counts its units without any work.
  int skip;
  int unit_slots;  // 1..kFusedUnitSlots: ring slots per attention unit, at most (the binding's default: all)
};

// nullptr when the shapes fit the kernel, else why they do not.
const char* fused_decode_unsupported(int hidden, int inter, int hq, int hkv, int head_dim);
size_t fused_decode_workspace_bytes(int num_layers, int hidden, int inter, int hq, int hkv);
size_t fused_decode_counters(int num_layers);
// Whether this device can run the kernel (compute capability 9.x, sm_90a code in the build, room for the ring).
bool fused_decode_available();
cudaError_t launch_fused_decode(const FusedDecodeArgs& a, cudaStream_t stream);

}  // namespace lite_srt
