"""The startup choice between our GEMV and cuBLAS for one-row linear layers (engine/gemv_tuning.py): which
weights it covers, how it decides, and that it stays out of the way where it does not apply. A real timed
decode step runs on a GPU (tests/test_kernels_gpu.py)."""

from __future__ import annotations

import pytest

from lite_srt import kernels
from lite_srt.engine import gemv_tuning
from lite_srt.engine.gemv_tuning import gemv_shapes, linear_weights, tune_one_row_linear
from lite_srt.engine.model_runner import ModelRunner

TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 200,
    "max_position_embeddings": 256,
}


@pytest.fixture
def runner(dummy_runner):
    def make(tied: bool, dtype: str = "float32") -> ModelRunner:
        return dummy_runner(
            {**TINY, "tie_word_embeddings": tied}, device="cpu", max_total_tokens=64, dtype=dtype
        )

    return make


@pytest.mark.parametrize("tied", [False, True])
def test_linear_weights_groups_every_projection_and_the_head_once(runner, tied) -> None:
    r = runner(tied)
    groups = linear_weights(r.model)
    head_dim = 64 // 4
    qkv = (4 + 2 * 2) * head_dim
    assert {s: len(ws) for s, ws in groups.items()} == {
        (qkv, 64): 3,
        (64, 4 * head_dim): 3,  # o_proj
        (2 * 96, 64): 3,  # gate|up
        (64, 96): 3,  # down
        (200, 64): 1,  # LM head: its own weight, or the embedding's when tied
    }
    ids = {id(w) for ws in groups.values() for w in ws}
    assert len(ids) == 13, "a weight was listed twice"
    if tied:
        assert groups[(200, 64)][0] is r.model.embed_tokens.weight


def test_only_half_precision_shapes_qualify(runner) -> None:
    assert gemv_shapes(runner(tied=False).model) == set()  # float32
    model = runner(tied=False, dtype="bfloat16").model
    assert gemv_shapes(model) == set(linear_weights(model))


@pytest.fixture
def auto_mode(monkeypatch):
    """Auto mode with a GEMV op present, whatever this machine's build has."""
    monkeypatch.setattr(kernels, "_GEMV_MODE", "auto")
    monkeypatch.setattr(kernels, "_GEMV_PICKS", set())
    monkeypatch.setattr(gemv_tuning.kernels, "has_native", lambda name, device: name == "gemv")


@pytest.mark.parametrize("native_wins", [True, False])
def test_tuning_alternates_the_paths_and_keeps_the_faster(runner, auto_mode, native_wins) -> None:
    model = runner(tied=False, dtype="bfloat16").model
    shapes = gemv_shapes(model)
    seen: list[bool] = []

    def time_step() -> float:
        native = kernels._GEMV_PICKS == shapes
        assert native or kernels._GEMV_PICKS == set()
        seen.append(native)
        fast = native == native_wins
        return (5.0 if fast else 5.3) + 0.1 * len(seen)  # drift: the minimum of each path counts

    choice = tune_one_row_linear(model, time_step)
    assert seen == [True, False, True, False]
    assert choice is not None
    assert (choice.native_ms, choice.cublas_ms) == pytest.approx((5.1, 5.5) if native_wins else (5.4, 5.2))
    assert choice.native is native_wins
    assert kernels._GEMV_PICKS == (shapes if native_wins else set())


@pytest.mark.parametrize("mode", ["0", "1"])
def test_a_forced_path_skips_the_timing(runner, auto_mode, monkeypatch, mode) -> None:
    monkeypatch.setattr(kernels, "_GEMV_MODE", mode)
    model = runner(tied=False, dtype="bfloat16").model
    assert tune_one_row_linear(model, lambda: pytest.fail("timed a forced path")) is None
    assert kernels._GEMV_PICKS == set()


def test_cpu_runner_has_no_choice(runner) -> None:
    assert runner(tied=False).gemv_choice is None
