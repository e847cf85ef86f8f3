// CPU kernels of lite_srt._C (C++17, parallel through ATen's OpenMP pool). bindings.cpp validates tensors and
// calls these with raw argument blocks; index values read from memory (slots, positions, lengths) are
// range-checked here, because on the CPU that is cheap and turns a bad table into a Python error, not a crash.
#pragma once

#include "../kernel_args.h"

namespace lite_srt::cpu {

void rmsnorm(const RmsNormArgs& a);  // also fused add + RMSNorm when a.residual != nullptr
void silu_and_mul(const SiluAndMulArgs& a);
void rotary_embedding(const RopeArgs& a);
void store_kv(const StoreKVArgs& a);
void decode_attention(const AttentionArgs& a);
void extend_attention(const AttentionArgs& a);

}  // namespace lite_srt::cpu
