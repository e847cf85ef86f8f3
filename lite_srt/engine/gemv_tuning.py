"""Startup choice between our GEMV and torch (cuBLAS) for one-row linear layers (decode at batch 1).

At batch 1 every linear layer is a matrix-vector product that streams its weight once, and which path is faster
depends on the GPU: ours wins on an H100 and loses on an H200 (docs/BENCHMARKS.md). Timing each weight shape
alone does not predict the step: our GEMV also lets its neighbours (norms, RoPE, attention) overlap with it
through programmatic dependent launch, which a cuBLAS kernel in between breaks. So the model runner times the
whole batch-1 decode step, captured as a CUDA graph, once with every linear layer on our GEMV and once with
none, alternating, and keeps the faster; the captured serving graphs then bake that choice in.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lite_srt import kernels
from lite_srt.layers.linear import ColumnParallelLinear, ParallelLMHead, RowParallelLinear

logger = logging.getLogger(__name__)

ROUNDS = 2  # alternating timings per path; the minimum of each counts


@dataclass(frozen=True)
class OneRowChoice:
    native_ms: float  # batch-1 decode step with every linear layer on the native GEMV
    cublas_ms: float  # the same step on torch (cuBLAS)

    @property
    def native(self) -> bool:
        return self.native_ms < self.cublas_ms


def linear_weights(model: nn.Module) -> dict[tuple[int, int], list[torch.Tensor]]:
    """The distinct weights that go through kernels.linear, grouped by (N, K) (a tied LM head counts once)."""
    groups: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, ColumnParallelLinear | RowParallelLinear):
            w = m.weight
        elif isinstance(m, ParallelLMHead):
            w = m.tied_to[0].weight if m.tied_to else m.weight
        else:
            continue
        if w is None or w.dim() != 2 or id(w) in seen:
            continue
        seen.add(id(w))
        groups[(w.shape[0], w.shape[1])].append(w)
    return dict(groups)


def gemv_shapes(model: nn.Module) -> set[tuple[int, int]]:
    """The weight shapes the native GEMV can take (fp16/bf16, K a multiple of 8)."""
    return {
        shape
        for shape, ws in linear_weights(model).items()
        if ws[0].dtype in (torch.float16, torch.bfloat16) and shape[1] % 8 == 0
    }


def best_alternating(time_ms: Callable[[bool], float], rounds: int = ROUNDS) -> dict[bool, float]:
    """The minimum of `rounds` timings each of time_ms(True) and time_ms(False), alternating so that drift (clocks,
    temperature) hits both alike."""
    best = {True: float("inf"), False: float("inf")}
    for _ in range(rounds):
        for on in (True, False):
            best[on] = min(best[on], time_ms(on))
    return best


def tune_one_row_linear(model: nn.Module, time_step_ms: Callable[[], float]) -> OneRowChoice | None:
    """Times `time_step_ms` (one batch-1 decode step, freshly captured) with the native GEMV on and off for
    every shape it takes, and leaves kernels on the faster. None when LITE_SRT_GEMV forces a path or nothing
    qualifies (then nothing changes)."""
    if not kernels.gemv_autotune() or not kernels.has_native("gemv", "cuda"):
        return None
    shapes = gemv_shapes(model)
    if not shapes:
        return None

    def timed(native: bool) -> float:
        kernels.set_gemv_picks(shapes if native else set())
        return time_step_ms()

    best = best_alternating(timed)
    choice = OneRowChoice(best[True], best[False])
    kernels.set_gemv_picks(shapes if choice.native else set())
    logger.info(
        "batch-1 decode step: %.3f ms with the native GEMV, %.3f ms with cuBLAS; using %s",
        choice.native_ms,
        choice.cublas_ms,
        "the native GEMV" if choice.native else "cuBLAS",
    )
    return choice
