// Rotary position embedding on the CPU, in place on q and k (neox halves or interleaved pairs).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "cpu_ops.h"
#include "vec.h"

namespace lite_srt::cpu {
namespace {

template <typename T>
void rotate_head(T* x, const float* cos, const float* sin, int64_t half, bool is_neox) {
  // In neox layout element i pairs with i + half; in the interleaved (GPT-J) layout 2i pairs with 2i + 1.
  const int64_t step = is_neox ? 1 : 2;
  const int64_t offset = is_neox ? half : 1;
  for (int64_t i = 0; i < half; ++i) {
    T* p1 = x + i * step;
    T* p2 = p1 + offset;
    const float x1 = to_float(*p1);
    const float x2 = to_float(*p2);
    *p1 = from_float<T>(x1 * cos[i] - x2 * sin[i]);
    *p2 = from_float<T>(x2 * cos[i] + x1 * sin[i]);
  }
}

}  // namespace

void rotary_embedding(const RopeArgs& a) {
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int64_t pos = a.positions[t];
    TORCH_CHECK_INDEX(pos >= 0 && pos < a.max_pos, "rotary_embedding: positions[", t, "] = ", pos,
                      " is outside cos_sin_cache (", a.max_pos, " rows)");
  }
  const int64_t half = a.head_dim / 2;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, a.tokens, 4, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const float* cos = a.cos_sin + a.positions[t] * a.head_dim;
        const float* sin = cos + half;
        T* q = static_cast<T*>(a.q) + t * a.q_stride.row;
        for (int64_t h = 0; h < a.q_heads; ++h) rotate_head(q + h * a.q_stride.head, cos, sin, half, a.is_neox);
        T* k = static_cast<T*>(a.k) + t * a.k_stride.row;
        for (int64_t h = 0; h < a.kv_heads; ++h) rotate_head(k + h * a.k_stride.head, cos, sin, half, a.is_neox);
      }
    });
  });
}

}  // namespace lite_srt::cpu
