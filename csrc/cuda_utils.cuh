// Device helpers shared by the .cu files: dtype conversion and dispatch, 16-byte packs, warp reductions over
// WARP_SIZE lanes, launch error checks. No torch headers (the .cu files must build with nvcc alone).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"

#if defined(USE_ROCM) || defined(__HIP_PLATFORM_AMD__)
#define LSRT_SHFL_XOR(v, mask) __shfl_xor((v), (mask))
#else
#define LSRT_SHFL_XOR(v, mask) __shfl_xor_sync(0xffffffffu, (v), (mask))
#endif

namespace lite_srt {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Runs f(T{}) with T the device type of dt (float, __half, __nv_bfloat16).
template <typename F>
inline void dispatch_cuda_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32:
      f(float{});
      break;
    case DType::kFloat16:
      f(__half{});
      break;
    case DType::kBFloat16:
      f(__nv_bfloat16{});
      break;
  }
}

// 16 bytes of T: the unit of every vectorized global load/store (one LDG.128 per lane).
template <typename T>
struct Pack16 {
  static constexpr int kElems = 16 / sizeof(T);
  uint4 raw;
  __device__ __forceinline__ T& operator[](int i) { return reinterpret_cast<T*>(&raw)[i]; }
  __device__ __forceinline__ const T& operator[](int i) const { return reinterpret_cast<const T*>(&raw)[i]; }
};

template <typename T>
__device__ __forceinline__ Pack16<T> load_pack(const T* p) {
  Pack16<T> out;
  out.raw = *reinterpret_cast<const uint4*>(p);
  return out;
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack16<T>& v) {
  *reinterpret_cast<uint4*>(p) = v.raw;
}

__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
  for (int mask = WARP_SIZE / 2; mask > 0; mask >>= 1) v += LSRT_SHFL_XOR(v, mask);
  return v;
}

__device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
  for (int mask = WARP_SIZE / 2; mask > 0; mask >>= 1) v = fmaxf(v, LSRT_SHFL_XOR(v, mask));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of WARP_SIZE, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_reduce_sum(float v) {
  __shared__ float partial[1024 / WARP_SIZE];
  const int lane = threadIdx.x % WARP_SIZE;
  const int warp = threadIdx.x / WARP_SIZE;
  v = warp_reduce_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int n_warps = blockDim.x / WARP_SIZE;
  float total = 0.0f;
  for (int w = 0; w < n_warps; ++w) total += partial[w];
  return total;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + " launch failed: " + cudaGetErrorString(err));
}

// Streaming multiprocessors of the current device (cached: the attribute query is not free per call).
inline int current_num_sms() {
  static int cached[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (cached[dev] == 0) cudaDeviceGetAttribute(&cached[dev], cudaDevAttrMultiProcessorCount, dev);
  return cached[dev];
}

}  // namespace lite_srt
