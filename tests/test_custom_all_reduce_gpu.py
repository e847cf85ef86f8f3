"""The custom all-reduce (CUDA IPC) on two or more GPUs: scripts/bench_all_reduce.py --check-only, which checks
bit-exact sums for every dtype and several sizes, 300 drifting back-to-back calls, graph capture and replay, and
agreement with NCCL. Marked `gpu`; needs 2 GPUs and a CUDA build of lite_srt._C (run on the device machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
    pytest.skip("needs 2 CUDA GPUs", allow_module_level=True)
_C = pytest.importorskip("lite_srt._C", reason="lite_srt._C is not built")
if not hasattr(_C, "all_reduce_cuda"):
    pytest.skip("lite_srt._C was built without CUDA", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_all_reduce.py"


def test_custom_all_reduce_matches_rank_order_sum() -> None:
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--nproc", "2", "--check-only", "--timeout", "240"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "correctness: ok" in r.stdout
