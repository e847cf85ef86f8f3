// RMSNorm and fused residual-add + RMSNorm on the CPU, one row per task.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "vec.h"

namespace lite_srt::cpu {
namespace {

template <typename T, typename W>
void rmsnorm_rows(const RmsNormArgs& a) {
  const int64_t h = a.hidden;
  const W* w = static_cast<const W*>(a.weight);
  at::parallel_for(0, a.rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(h);
    for (int64_t r = begin; r < end; ++r) {
      const T* x = static_cast<const T*>(a.x) + r * a.x_stride;
      if (a.residual != nullptr) {
        // The sum is rounded to T before it is normalized, exactly as the reference's in-place add.
        T* res = static_cast<T*>(a.residual) + r * a.residual_stride;
        for (int64_t i = 0; i < h; ++i) {
          res[i] = from_float<T>(to_float(res[i]) + to_float(x[i]));
          row[i] = to_float(res[i]);
        }
      } else {
        for (int64_t i = 0; i < h; ++i) row[i] = to_float(x[i]);
      }
      float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
      for (int64_t i = 0; i < h; ++i) sum_sq += row[i] * row[i];
      const float inv = 1.0f / std::sqrt(sum_sq / static_cast<float>(h) + a.eps);
      T* out = static_cast<T*>(a.out) + r * a.out_stride;
      for (int64_t i = 0; i < h; ++i) out[i] = from_float<T>(row[i] * inv * to_float(w[i]));
    }
  });
}

}  // namespace

void rmsnorm(const RmsNormArgs& a) {
  dispatch_dtype(a.dtype, [&](auto t) {
    using T = decltype(t);
    if (a.weight_dtype == DType::kFloat32) {
      rmsnorm_rows<T, float>(a);
    } else {
      rmsnorm_rows<T, T>(a);
    }
  });
}

}  // namespace lite_srt::cpu
