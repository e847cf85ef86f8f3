// pdl_enabled(): see launch.h.
#include <cstdlib>
#include <cstring>

#include "launch.cuh"

namespace lite_srt {
namespace {

// Compiled like every other kernel of the build: its PTX version tells whether the build's kernels contain
// the sm_90 waits (a compute_80 build JIT-compiled for this device would not).
__global__ void pdl_probe_kernel() {}

bool query_pdl(int dev) {
  const char* env = std::getenv("LITE_SRT_PDL");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 9) return false;
  cudaFuncAttributes attrs{};
  if (cudaFuncGetAttributes(&attrs, pdl_probe_kernel) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of the failed query
    return false;
  }
  return attrs.ptxVersion >= 90 && attrs.binaryVersion >= 90;
}

}  // namespace

bool pdl_enabled() {
  static int cached[64] = {0};  // 0 unknown, 1 off, 2 on
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) return false;
  if (cached[dev] == 0) cached[dev] = query_pdl(dev) ? 2 : 1;
  return cached[dev] == 2;
}

}  // namespace lite_srt
