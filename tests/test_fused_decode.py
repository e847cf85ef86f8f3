"""Where the fused batch-1 decode step applies and how it is chosen (engine/fused_decode.py), without a GPU; the
kernel itself is checked against the unfused model in tests/test_fused_decode_gpu.py."""

from __future__ import annotations

import os

import pytest
import torch

from lite_srt.engine import fused_decode, gemv_tuning
from lite_srt.engine.cuda_graph import CudaGraphRunner
from lite_srt.engine.forward_batch import DecodeKeys, ForwardBatch, ForwardMode

TINY = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 100,
    "max_position_embeddings": 256,
}


def test_not_used_off_the_gpu_or_when_turned_off(dummy_runner, monkeypatch):
    r = dummy_runner(TINY, device="cpu", max_total_tokens=64, dtype="bfloat16")
    assert fused_decode.unsupported_reason(r.model, r.pool, 1) == "not an NVIDIA GPU"
    assert fused_decode.unsupported_reason(r.model, r.pool, 2) == "tensor parallelism"
    assert fused_decode.FusedDecodeStep.create(r.model, r.pool, 1) is None
    monkeypatch.setattr(fused_decode, "_MODE", "0")
    assert fused_decode.mode() == "0"
    assert fused_decode.FusedDecodeStep.create(r.model, r.pool, 1) is None


def test_unsupported_model_kinds_are_named(dummy_runner):
    r = dummy_runner(TINY, device="cpu", max_total_tokens=64)
    assert (
        fused_decode.unsupported_reason(torch.nn.Linear(2, 2), r.pool, 1) == "not a Llama-architecture model"
    )


@pytest.mark.parametrize(("fused_ms", "unfused_ms", "expect"), [(5.1, 6.3, True), (6.0, 5.0, False)])
def test_choose_keeps_the_faster_step(monkeypatch, fused_ms, unfused_ms, expect):
    monkeypatch.setattr(fused_decode, "_MODE", "auto")
    calls: list[bool] = []

    def time_step(on: bool) -> float:
        calls.append(on)
        return fused_ms if on else unfused_ms

    choice = fused_decode.choose(time_step)
    assert choice is not None and choice.fused is expect
    assert calls == [True, False] * gemv_tuning.ROUNDS  # alternating, so drift hits both alike
    assert (choice.fused_ms, choice.unfused_ms) == (fused_ms, unfused_ms)


def test_the_default_is_the_startup_timing(monkeypatch):
    # Unset or unrecognized: timed at startup (the faster step differs by GPU: fused on an H100, not on an H200).
    if "LITE_SRT_FUSED_DECODE" not in os.environ:
        assert fused_decode.mode() == "auto"
    monkeypatch.setattr(fused_decode, "_MODE", "yes")
    assert fused_decode.mode() == "auto"
    choice = fused_decode.choose(lambda on: 5.0 if on else 6.0)
    assert choice is not None and choice.fused


@pytest.mark.parametrize("forced", ["0", "1"])
def test_a_forced_mode_times_nothing(monkeypatch, forced):
    monkeypatch.setattr(fused_decode, "_MODE", forced)
    assert fused_decode.choose(lambda on: pytest.fail("timed")) is None


def _batch(bs: int, table: torch.Tensor, keys: int = 10) -> ForwardBatch:
    z = torch.zeros(bs, dtype=torch.int64)
    fb = ForwardBatch(ForwardMode.DECODE, z, z, z, z, z + keys, z + 1, z, z, table)
    fb.decode_keys = DecodeKeys.of(fb.seq_lens)
    return fb


def test_graph_runner_replays_the_fused_graph_only_where_it_fits(dummy_runner):
    r = dummy_runner(TINY, device="cpu", max_total_tokens=64)
    seen: list[int] = []

    class FakeFused:
        max_keys = 2048

        def __call__(self, fb: ForwardBatch) -> torch.Tensor:
            seen.append(fb.batch_size)
            return torch.zeros(1, TINY["vocab_size"])

    g = CudaGraphRunner(r.model, r.pool, r.table.table, 0, max_bs=2, fused=FakeFused())  # type: ignore[arg-type]
    table = r.table.table
    assert not g.use_fused(_batch(1, table))  # nothing captured yet
    g.fused_graph = object()  # type: ignore[assignment]  # as if captured
    assert g.use_fused(_batch(1, table, keys=2048))
    assert not g.use_fused(_batch(1, table, keys=2049))  # past the kernel's keys: the unfused graph
    assert not g.use_fused(_batch(2, table))
    g._forward(_batch(1, table), fused=True)
    assert seen == [1]
    with torch.inference_mode():
        out = g._forward(_batch(1, table))
    assert seen == [1] and out.shape == (1, TINY["vocab_size"])
