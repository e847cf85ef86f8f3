// Launcher of the KV store kernel (store_kv.cu).
#pragma once

#include <cuda_runtime_api.h>

#include "../kernel_args.h"

namespace lite_srt {

void launch_store_kv(const StoreKVArgs& a, cudaStream_t stream);

}  // namespace lite_srt
