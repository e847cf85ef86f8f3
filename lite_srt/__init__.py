"""lite_srt: a small, fast LLM serving runtime.

`Engine` and `SamplingParams` are imported lazily so that `import lite_srt.kernels` (or the CLI's --help) does
not pull in the whole engine.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Engine", "SamplingParams", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from lite_srt.engine.engine import Engine

        return Engine
    if name == "SamplingParams":
        from lite_srt.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'lite_srt' has no attribute {name!r}")
