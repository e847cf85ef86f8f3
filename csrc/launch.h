// Host-side switch for programmatic dependent launch (launch.cuh has the launch helper and device side).
#pragma once

namespace lite_srt {

// Whether kernel launches on the current device carry the PDL attribute: a device of compute capability 9.0+,
// a build whose kernels were compiled for it (a compute_80-only build JIT-compiled for sm_90 would lack the
// waits), and LITE_SRT_PDL unset or not "0" (the A/B switch). Cached per device on first use.
bool pdl_enabled();

}  // namespace lite_srt
