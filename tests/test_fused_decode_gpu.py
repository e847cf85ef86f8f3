"""The fused batch-1 decode kernel (csrc/fused/decode_step.cu) against the unfused model on the same weights and
KV cache: logits, and the new token's K/V written to the pool.

Runs only on a Hopper GPU with an sm_90a build (marked `gpu`). Dummy Llama-architecture models small enough to
build in a second, with random (not unit) norm weights, and KV histories at scattered pool slots. Tolerance: the
two paths round the same activations to bf16 but sum in other orders, so values drift by a few bf16 ulps per
layer: logits agree to 3% of their largest magnitude, cosine > 0.999; stored K/V to 2%.
"""

from __future__ import annotations

import pytest
import torch

from lite_srt.engine import fused_decode
from lite_srt.engine.forward_batch import DecodeKeys, ForwardBatch, ForwardMode
from lite_srt.engine.sampler import SamplerRow, SamplingBatch
from lite_srt.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("CUDA is not available on this machine", allow_module_level=True)
_C = pytest.importorskip("lite_srt._C", reason="lite_srt._C is not built")
if not hasattr(_C, "fused_decode_cuda") or not _C.fused_decode_available_cuda(0):
    pytest.skip(
        "the fused decode kernel needs a compute capability 9.x GPU and sm_90a code", allow_module_level=True
    )

BASE = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 1001,  # odd: the LM head's last unit is one row
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
}
CONFIGS = {
    "gqa4": BASE,
    "gqa1_bias_tied": {**BASE, "num_key_value_heads": 8, "attention_bias": True, "tie_word_embeddings": True},
    "gqa2_llama3_rope_split_down": {
        **BASE,
        "hidden_size": 2048,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "intermediate_size": 10240,  # two 16 KB pieces per down row
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
}


def _runner(dummy_runner, config: dict, **kw):
    return dummy_runner(
        config, context_length=4096, device="cuda", dtype="bfloat16", max_total_tokens=8192, **kw
    )


def _randomize_norms(model: torch.nn.Module) -> None:
    gen = torch.Generator(device="cuda").manual_seed(7)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.copy_(1 + 0.3 * torch.randn(p.shape, device="cuda", generator=gen))


def _decode_batch(runner, n: int, seed: int) -> ForwardBatch:
    """A one-request decode step at context n: history K/V random at scattered slots; the new token's slot
    poisoned (both paths must write it)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    pool = runner.pool
    slots = torch.randperm(pool.num_slots, device="cuda", generator=gen)[:n]
    row = 3
    table = runner.table.table
    table[row, :n] = slots.to(torch.int32)
    for buf in (pool.k_data, pool.v_data):
        buf[:, slots] = torch.randn(buf[:, slots].shape, device="cuda", generator=gen).to(buf.dtype)
        buf[:, slots[-1]] = float("nan")
    tok = int(torch.randint(0, runner.cfg.vocab_size, (1,), generator=gen, device="cuda"))

    def t(v: int) -> torch.Tensor:
        return torch.tensor([v], dtype=torch.int64, device="cuda")

    return ForwardBatch(
        mode=ForwardMode.DECODE, input_ids=t(tok), positions=t(n - 1), out_cache_loc=t(int(slots[-1])),
        req_pool_indices=t(row), seq_lens=t(n), extend_lens=t(1), extend_start_loc=t(0), logits_indices=t(0),
        req_to_token=table,
    )  # fmt: skip


def _check(fused: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert torch.isfinite(fused).all()
    err = (fused.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    assert err <= tol * scale, f"max error {err:.4g} vs {tol} x {scale:.4g}"
    cos = torch.nn.functional.cosine_similarity(fused.float().flatten(), ref.float().flatten(), dim=0).item()
    assert cos > 0.999, cos


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 700, 1100, 2048])
def test_fused_step_matches_the_unfused_model(dummy_runner, name, n):
    _compare_steps(dummy_runner, name, n)


# The attention units' length (fused_bindings.cpp): at most 1 ring slot (32 keys) each, or 2, against the default
# 4 the other tests use (with 8 KV heads on 132 SMs: one unit of up to 4 slots per block).
@pytest.mark.parametrize("slots", ["1", "2"])
@pytest.mark.parametrize("n", [33, 513, 1100, 2048])
def test_fused_step_with_shorter_attention_units(dummy_runner, monkeypatch, slots, n):
    monkeypatch.setenv("LITE_SRT_FUSED_UNIT_SLOTS", slots)
    _compare_steps(dummy_runner, "gqa2_llama3_rope_split_down", n)


def _compare_steps(dummy_runner, name: str, n: int) -> None:
    runner = _runner(dummy_runner, CONFIGS[name], disable_cuda_graph=True)
    _randomize_norms(runner.model)
    assert fused_decode.unsupported_reason(runner.model, runner.pool, 1) is None
    table = torch.full((8,), -1, dtype=torch.int64, device="cuda")
    step = fused_decode.FusedDecodeStep(runner.model, runner.pool, table)
    fb = _decode_batch(runner, n, seed=n)
    slot = int(fb.out_cache_loc[0])
    with torch.inference_mode():
        ref = runner.model(fb, runner.pool).clone()
        ref_k, ref_v = runner.pool.k_data[:, slot].clone(), runner.pool.v_data[:, slot].clone()
        runner.pool.k_data[:, slot] = float("nan")
        runner.pool.v_data[:, slot] = float("nan")
        out = step(fb).clone()
        again = step(fb).clone()  # counters are reset per launch: a second step gives the same logits
    torch.cuda.synchronize()
    _check(out, ref, 0.03)
    _check(runner.pool.k_data[:, slot], ref_k, 0.02)
    _check(runner.pool.v_data[:, slot], ref_v, 0.02)
    torch.testing.assert_close(again, out, atol=1e-5, rtol=0)
    # The kernel's greedy token is the argmax of its own logits (the first maximum, as torch's), also at the
    # request's row of the token table (and nowhere else).
    assert int(step.token) == int(again.argmax())
    row = int(fb.req_pool_indices[0])
    assert int(table[row]) == int(step.token)
    assert (table[torch.arange(8, device="cuda") != row] == -1).all()


def test_batch_one_graph_replays_the_fused_step(dummy_runner, monkeypatch):
    monkeypatch.setattr(fused_decode, "_MODE", "1")
    runner = _runner(dummy_runner, CONFIGS["gqa4"], cuda_graph_max_bs=4)
    graphs = runner.graphs
    assert graphs is not None and graphs.fused is not None and graphs.fused_graph is not None
    for n, fused in ((900, True), (graphs.fused.max_keys, True), (graphs.fused.max_keys + 1, False)):
        fb = _decode_batch(runner, n, seed=n)
        fb.decode_keys = DecodeKeys.of(fb.seq_lens.cpu())
        before = graphs.fused_replays
        with torch.inference_mode():
            ref = runner.model(fb, runner.pool).clone()
            out = graphs.replay(fb).clone()
        torch.cuda.synchronize()
        assert graphs.fused_replays - before == int(fused)  # past max_keys: the unfused graph
        _check(out, ref, 0.03)


@pytest.mark.parametrize("logprobs", [False, True])
def test_greedy_runner_step_takes_the_kernels_token(dummy_runner, monkeypatch, logprobs):
    """Through ModelRunner.step: a plain greedy step returns the fused kernel's argmax and leaves it in the
    next-token table; a step that wants logprobs samples the logits instead, to the same token."""
    monkeypatch.setattr(fused_decode, "_MODE", "1")
    runner = _runner(dummy_runner, CONFIGS["gqa4"], cuda_graph_max_bs=4)
    fb = _decode_batch(runner, 900, seed=5)
    fb.decode_keys = DecodeKeys.of(fb.seq_lens.cpu())
    with torch.inference_mode():
        ref = runner.model(fb, runner.pool).float()
    params = SamplingParams(temperature=0.0, max_new_tokens=4, logprobs=logprobs)
    sampling = SamplingBatch.build(
        [SamplerRow(params, 0, 0, [], [], frozenset())], runner.cfg.vocab_size, "cuda"
    )
    row = int(fb.req_pool_indices[0])
    runner.next_tokens[row] = -1
    before = runner.graphs.fused_replays
    out = runner.step(fb, [0], sampling)
    assert runner.graphs.fused_replays - before == 1
    token = out.next_token_ids[0]
    assert int(runner.next_tokens[row]) == token
    assert token == int(runner.graphs.fused_output.argmax())  # the fused logits' first maximum, either way
    # The fused logits differ from the unfused ones by bf16 rounding: the token must be a near-maximum of ref.
    assert float(ref[0, token]) >= float(ref.max()) - 0.03 * float(ref.abs().max())
    assert (out.logprobs is not None) == logprobs


def test_unsupported_shapes_are_named():
    assert "head_dim" in _C.fused_decode_unsupported_cuda(576, 1536, 9, 3, 64)  # SmolLM2-135M
    assert "query heads" in _C.fused_decode_unsupported_cuda(
        3584, 18944, 28, 4, 128
    )  # Qwen2.5-7B: 7 per KV head
    assert _C.fused_decode_unsupported_cuda(4096, 14336, 32, 8, 128) == ""  # Llama-3.1-8B


def test_auto_mode_times_both_steps_at_a_real_context(dummy_runner, monkeypatch):
    monkeypatch.setattr(fused_decode, "_MODE", "auto")
    runner = _runner(dummy_runner, CONFIGS["gqa4"], cuda_graph_max_bs=2)
    choice = runner.fused_choice
    assert choice is not None and choice.fused_ms > 0 and choice.unfused_ms > 0
    assert (runner.graphs.fused is not None) == choice.fused
    assert int(runner.graphs.inputs.seq_lens[0]) == 1  # the timing's context is undone for padding
