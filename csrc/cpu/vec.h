// Helpers shared by the CPU kernels: dtype dispatch, float conversion, and an exp the compiler can vectorize.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "../common.h"

namespace lite_srt::cpu {

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline T from_float(float v) {
  return static_cast<T>(v);  // round-to-nearest-even, as torch's .to(dtype)
}

// Calls f(T{}) with T the C++ type of dt; instantiates each kernel for exactly the three supported dtypes.
template <typename F>
inline void dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32:
      f(float{});
      break;
    case DType::kFloat16:
      f(c10::Half{});
      break;
    case DType::kBFloat16:
      f(c10::BFloat16{});
      break;
  }
}

// exp(x) for x <= 0 (softmax arguments after subtracting the row max), relative error < 1e-7.
// libm's scalar exp does not vectorize without -ffast-math and dominated the attention time.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;
  constexpr float kLn2Lo = 1.428606765330187e-06f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;  // |r| <= ln2 / 2
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace lite_srt::cpu
