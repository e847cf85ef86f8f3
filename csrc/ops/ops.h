// Launchers of the fused elementwise CUDA kernels (norm.cu, act.cu, rope.cu). Torch-free: bindings.cpp fills
// the argument blocks after validating the tensors.
#pragma once

#include <cuda_runtime_api.h>

#include "../kernel_args.h"

namespace lite_srt {

void launch_rmsnorm(const RmsNormArgs& a, cudaStream_t stream);  // fused add + RMSNorm when a.residual != nullptr
void launch_silu_and_mul(const SiluAndMulArgs& a, cudaStream_t stream);
void launch_rotary_embedding(const RopeArgs& a, cudaStream_t stream);
// RoPE in place on q and k, then k_cache[slots[t]] = k[t], v_cache[slots[t]] = v[t] (slot < 0 skipped): the
// tokens and k of `store` are those of `rope`.
void launch_rope_store_kv(const RopeArgs& rope, const StoreKVArgs& store, cudaStream_t stream);

}  // namespace lite_srt
