// Kernel launches with programmatic dependent launch (PDL, sm_90+).
//
// A decode step is a chain of a few hundred short kernels; at small batch each one spends part of its time
// starting up (block scheduling, first loads in flight) and draining (the last blocks finishing). With PDL the
// next kernel of the stream is launched while the current one is still running: its blocks do their
// independent prologue (index math, the GEMV's first weight loads) and then block in pdl_wait() until the
// previous kernel has completed and its writes are visible. Inside CUDA graphs the attribute becomes a
// programmatic edge, so replays overlap the same way.
//
// Rules for every kernel launched through launch_kernel():
//  - call pdl_wait() before the first global read of anything an earlier kernel writes and before the first
//    global write (an earlier kernel may still read the buffer);
//  - call pdl_launch_dependents() after pdl_wait(): the next kernel may then be scheduled on free SM slots.
// A kernel launched this way that skipped pdl_wait() would race with its predecessor; the wait is a no-op
// when the kernel was launched without the attribute.
#pragma once

#include <cuda_runtime.h>

#include "launch.h"

namespace lite_srt {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(USE_ROCM)
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(USE_ROCM)
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), with PDL where pdl_enabled().
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args... args) {
#if defined(USE_ROCM)
  kernel<<<grid, block, smem, stream>>>(args...);
#else
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = pdl_enabled() ? 1 : 0;
  cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
#endif
}

}  // namespace lite_srt
