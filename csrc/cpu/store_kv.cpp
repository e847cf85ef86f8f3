// KV store on the CPU: copy each token's K/V heads into its pool slot; slot < 0 marks padding to skip.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstring>

#include "cpu_ops.h"
#include "vec.h"

namespace lite_srt::cpu {

void store_kv(const StoreKVArgs& a) {
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int64_t slot = a.slots[t];
    TORCH_CHECK_INDEX(slot < a.num_slots, "store_kv: slots[", t, "] = ", slot, " but the pool has ", a.num_slots,
                      " slots");
  }
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const size_t row_bytes = static_cast<size_t>(a.head_dim) * sizeof(T);
    at::parallel_for(0, a.tokens, 64, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t slot = a.slots[t];
        if (slot < 0) continue;
        for (int64_t h = 0; h < a.kv_heads; ++h) {
          std::memcpy(static_cast<T*>(a.k_cache) + slot * a.k_cache_stride.row + h * a.k_cache_stride.head,
                      static_cast<const T*>(a.k) + t * a.k_stride.row + h * a.k_stride.head, row_bytes);
          std::memcpy(static_cast<T*>(a.v_cache) + slot * a.v_cache_stride.row + h * a.v_cache_stride.head,
                      static_cast<const T*>(a.v) + t * a.v_stride.row + h * a.v_stride.head, row_bytes);
        }
      }
    });
  });
}

}  // namespace lite_srt::cpu
