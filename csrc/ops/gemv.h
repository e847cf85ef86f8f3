// Small-batch GEMV launcher (gemv.cu): y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for M <= kGemvMaxRows, the
// decode-time linear layer. Torch-free: bindings.cpp validates the tensors and fills GemvArgs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common.h"

namespace lite_srt {

// Largest number of activation rows one launch takes (the kernel is instantiated for 1..kGemvMaxRows).
constexpr int kGemvMaxRows = 8;

// out[m, n] = sum_k in(m, k) * weight[n, k] (+ bias[n]), accumulated in float32, for m < rows, n < n.
// in(m, k) = x[m, k], or silu(x[m, k]) * x[m, k + K] rounded to dtype when fuse_silu_mul (x is [rows, 2K]).
// Requirements the launcher trusts (bindings.cpp checks them): dtype float16 or bfloat16 for every tensor,
// 1 <= rows <= kGemvMaxRows, k % 8 == 0, weight contiguous [n, k], x rows 16-byte aligned (x and
// x_stride a multiple of 8 elements), bias contiguous [n] or nullptr. out needs no alignment.
struct GemvArgs {
  void* out;
  int64_t out_stride;
  const void* x;
  int64_t x_stride;
  const void* weight;
  const void* bias;
  int64_t rows;
  int64_t n;
  int64_t k;
  bool fuse_silu_mul;
  DType dtype;
};

void launch_gemv(const GemvArgs& a, cudaStream_t stream);

}  // namespace lite_srt
