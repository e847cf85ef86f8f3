// SiLU-and-mul on the CPU: out = silu(gate) * up for x = [gate | up].
#include <ATen/Parallel.h>

#include <cmath>

#include "cpu_ops.h"
#include "vec.h"

namespace lite_srt::cpu {

void silu_and_mul(const SiluAndMulArgs& a) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = a.inter;
    at::parallel_for(0, a.rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* gate = static_cast<const T*>(a.x) + r * a.x_stride;
        const T* up = gate + n;
        T* out = static_cast<T*>(a.out) + r * a.out_stride;
        for (int64_t i = 0; i < n; ++i) {
          const float g = to_float(gate[i]);
          out[i] = from_float<T>(g / (1.0f + std::exp(-g)) * to_float(up[i]));
        }
      }
    });
  });
}

}  // namespace lite_srt::cpu
