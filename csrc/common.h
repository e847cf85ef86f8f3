// Shared definitions for every lite_srt kernel (CPU, CUDA and ROCm). No torch headers here: the .cu files
// include this, and they must compile with nvcc alone.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LSRT_HOST_DEVICE __host__ __device__
#define LSRT_DEVICE __device__
#else
#define LSRT_HOST_DEVICE
#define LSRT_DEVICE
#endif

namespace lite_srt {

// Lanes per warp/wavefront. Every cross-lane reduction in the CUDA sources goes through this constant, so the
// hipified build on AMD (64-lane wavefronts) needs no other change.
#if defined(__HIP_PLATFORM_AMD__) || defined(USE_ROCM)
constexpr int WARP_SIZE = 64;
#else
constexpr int WARP_SIZE = 32;
#endif

// Element types a launcher can be asked to run on; bindings.cpp maps torch dtypes onto these.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// An index array whose width (int32 or int64) is chosen by the caller. The engine may pass either for slots,
// positions and lengths; branching on a uniform flag is cheaper than doubling every kernel instantiation.
struct IndexArray {
  const void* ptr;
  bool is_int64;

  LSRT_HOST_DEVICE inline int64_t operator[](int64_t i) const {
    return is_int64 ? static_cast<const int64_t*>(ptr)[i] : static_cast<const int32_t*>(ptr)[i];
  }
};

// Strides (in elements) of a [rows, heads, dim] tensor whose last dim is contiguous.
struct Strides3 {
  int64_t row;
  int64_t head;
};

inline LSRT_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace lite_srt
