"""ForwardProfiler: a torch.profiler trace of the forward thread, started and stopped on demand.

The server exposes it as POST /start_profile and /stop_profile (the names SGLang uses), so a trace can be taken
in the middle of a serving benchmark: the CPU ops of the forward thread and, on a GPU, every kernel. The trace is
a Chrome trace JSON (open in Perfetto or chrome://tracing; `scripts/trace_summary.py` prints GPU busy time and
the top kernels). Under tensor parallelism it traces rank 0 only.

Ownership: `start` and `stop` run on the forward thread (the engine submits them there), because the profiler
records CPU ops of the thread that started it.
"""

from __future__ import annotations

import os
import time

import torch
from torch.profiler import ProfilerActivity, profile


class ForwardProfiler:
    def __init__(self) -> None:
        self._prof: profile | None = None
        self._dir = ""

    @property
    def active(self) -> bool:
        return self._prof is not None

    def start(self, out_dir: str, cuda: bool) -> None:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        prof = profile(activities=activities, record_shapes=False, with_stack=False)
        prof.start()
        self._prof, self._dir = prof, out_dir

    def stop(self) -> str:
        """Stop and write the trace; returns its path."""
        assert self._prof is not None
        prof, self._prof = self._prof, None
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels launched before stop belong in the trace
        prof.stop()
        path = os.path.join(self._dir, f"lite_srt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.trace.json")
        prof.export_chrome_trace(path)
        return path
