"""Builds the lite_srt._C extension: CUDA (or ROCm through torch's hipify) when torch has a GPU runtime,
else CPU-only.

Environment:
  LITE_SRT_CUDA_ARCHS  ";"-separated GPU archs for CUDA builds (default "80;90a"), e.g. "90a" for an H100 only.
  LITE_SRT_CPU_ARCH    -march value for the CPU kernels (default "native"; set it empty for a portable build).
  LITE_SRT_NO_EXT=1    skip the extension (pure-Python install; the torch reference kernels are used).
  MAX_JOBS             ninja parallelism (torch's BuildExtension reads it).

scripts/jit_build.py builds the same sources with torch.utils.cpp_extension.load; both use the helpers below.
"""

from __future__ import annotations

import glob
import os

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_CUDA_ARCHS = "80;90a"


def gpu_runtime() -> str:
    """'cuda', 'rocm' or 'cpu': what torch was built with (and so what we can link against)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, ROCM_HOME

    if torch.version.hip is not None and ROCM_HOME is not None:
        return "rocm"
    if torch.version.cuda is not None and CUDA_HOME is not None:
        return "cuda"
    return "cpu"


def _rel(paths: list[str]) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def radix_sources() -> list[str]:
    """The C++ radix tree (owned by the memory code) is compiled in when its binding file exists."""
    return (
        _rel(glob.glob(os.path.join(CSRC, "radix", "*.cpp")))
        if os.path.exists(os.path.join(CSRC, "radix", "radix_bindings.cpp"))
        else []
    )


def sources(runtime: str) -> list[str]:
    srcs = ["csrc/bindings.cpp", *_rel(glob.glob(os.path.join(CSRC, "cpu", "*.cpp"))), *radix_sources()]
    if runtime != "cpu":
        # GPU-only bindings live beside their kernels (csrc/fused/fused_bindings.cpp)
        srcs += _rel(glob.glob(os.path.join(CSRC, "fused", "*.cpp")))
        srcs += _rel(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    return srcs


def cuda_arch_flags() -> list[str]:
    archs = [
        a.strip() for a in os.environ.get("LITE_SRT_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).split(";") if a.strip()
    ]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def compile_args(runtime: str) -> dict[str, list[str]]:
    defines = ["-DLITE_SRT_WITH_RADIX"] if radix_sources() else []
    cpu_arch = os.environ.get("LITE_SRT_CPU_ARCH", "native")
    cxx = ["-O3", "-std=c++17", "-fopenmp", *defines] + ([f"-march={cpu_arch}"] if cpu_arch else [])
    if runtime == "cpu":
        return {"cxx": cxx}
    cxx.append("-DLITE_SRT_WITH_CUDA")
    if runtime == "rocm":
        # hipcc takes the same source after hipify; the wavefront width comes from common.h's WARP_SIZE.
        return {"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "-DLITE_SRT_WITH_CUDA", *defines]}
    nvcc = [
        "-O3",
        "-std=c++17",
        "-DLITE_SRT_WITH_CUDA",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        # torch's headers disable half/bf16 operators by default; our .cu files include no torch header, but
        # keep the flags consistent in case a header pulls cuda_fp16 in through torch.
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_HALF2_OPERATORS__",
        *defines,
        *cuda_arch_flags(),
    ]
    return {"cxx": cxx, "nvcc": nvcc}


def extension_kwargs(runtime: str) -> dict:
    return {
        "sources": sources(runtime),
        "include_dirs": [CSRC],
        "extra_compile_args": compile_args(runtime),
        "extra_link_args": ["-fopenmp"],
    }


def build_extensions() -> list:
    if os.environ.get("LITE_SRT_NO_EXT") == "1":
        return []
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    runtime = gpu_runtime()
    ext_cls = CppExtension if runtime == "cpu" else CUDAExtension
    return [ext_cls("lite_srt._C", **extension_kwargs(runtime))]


if __name__ == "__main__":
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension

    setup(ext_modules=build_extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
