"""The real model end to end on a CUDA GPU through the compiled kernels and CUDA graphs (skipped without one).

float32: greedy output is token-exact against transformers float32 on the same GPU.
bfloat16: the first tokens match transformers bfloat16 (rounding differs between the two kernel sets, so a
near-tie later in a long generation may flip; we require the first 8 tokens to match exactly).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPTS = [
    "The capital of France is",
    "def quicksort(arr):",
    "Write a haiku about the sea.\n",
    "请介绍一下长城。",
    "Once upon a time",
]


def _reference(model, tok, dtype: torch.dtype, n: int) -> list[tuple[list[int], list[int]]]:
    model = copy.deepcopy(model).to("cuda", dtype)  # the session fixture stays float32 on the CPU
    out = []
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        with torch.no_grad():
            g = model.generate(
                torch.tensor([ids], device="cuda"),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        out.append((ids, g[0, len(ids) :].tolist()))
    return out


@pytest.mark.parametrize(
    "dtype,n_exact,graphs", [("float32", 24, True), ("float32", 24, False), ("bfloat16", 8, True)]
)
def test_real_model_greedy_on_gpu(smollm_gguf_path, hf_reference, dtype, n_exact, graphs):
    from lite_srt import Engine, kernels

    assert kernels.has_native("decode_attention", "cuda"), "the CUDA kernels are not built"
    model, tok = hf_reference
    ref = _reference(model, tok, getattr(torch, dtype), n_exact)
    e = Engine(
        model_path=smollm_gguf_path,
        device="cuda",
        dtype=dtype,
        max_total_tokens=16384,
        disable_cuda_graph=not graphs,
    )
    try:
        assert (e.core.runner.graphs is not None) == graphs
        alone = [
            e.generate(input_ids=ids, sampling_params={"max_new_tokens": n_exact, "temperature": 0})
            for ids, _ in ref
        ]
        together = e.generate(
            input_ids=[ids for ids, _ in ref], sampling_params={"max_new_tokens": n_exact, "temperature": 0}
        )
        for (_, want), a, b in zip(ref, alone, together):
            assert a["output_ids"][:n_exact] == want[:n_exact]
            assert b["output_ids"][:n_exact] == want[:n_exact]
    finally:
        e.shutdown()


def test_cascade_decode_matches_plain_decode_on_the_real_model(smollm_gguf_path, monkeypatch):
    """Requests sharing a cached 640-token prefix decode through cascade groups (the shared keys read once per
    group, prefix_groups.py). Every cascade attention call of the real model (strided q, the live table and
    pool) is checked against plain decode attention on the same inputs: within bf16 rounding (1e-2 of the
    output's magnitude, as the kernel tests). Whole generations are not compared: on this synthetic prompt the
    logits are flat, and a rounding difference flips a near-tie argmax."""
    from lite_srt import Engine, kernels
    from lite_srt.engine import scheduler

    monkeypatch.setattr(
        scheduler, "MIN_SAVED_KEYS", 0
    )  # 12 requests save fewer keys than the serving threshold
    real = kernels.decode_attention
    errors: list[float] = []

    def checked(q, k_cache, v_cache, table, rows, seq_lens, scale, cascade=None, keys=None):
        out = real(q, k_cache, v_cache, table, rows, seq_lens, scale, cascade, keys=keys)
        if cascade is not None:
            plain = real(q, k_cache, v_cache, table, rows, seq_lens, scale).float()
            errors.append(((out.float() - plain).abs().max() / plain.abs().max()).item())
        return out

    monkeypatch.setattr(kernels, "decode_attention", checked)
    prefix = [1000 + (i * 37) % 20000 for i in range(640)]
    prompts = [prefix + [30000 + 7 * q + i for i in range(5)] for q in range(12)]
    params = {"max_new_tokens": 16, "temperature": 0}
    # Eager: captured cascade graphs would replay without calling the check (test below covers graphs).
    e = Engine(
        model_path=smollm_gguf_path,
        device="cuda",
        dtype="bfloat16",
        max_total_tokens=32768,
        disable_cuda_graph=True,
    )
    try:
        assert e.core.runner.cascade_attention
        e.generate(input_ids=prefix + [5], sampling_params=params)  # caches the prefix
        outs = e.generate(input_ids=prompts, sampling_params=params)
        steps = e.core.stats().cascade_steps_total
    finally:
        e.shutdown()
    print(f"cascade vs plain attention: {len(errors)} calls, max relative error {max(errors, default=0):.2e}")
    assert all(len(o["output_ids"]) == 16 for o in outs)
    assert steps >= 10 and len(errors) >= 10 * 30  # every layer of most decode steps
    assert max(errors) <= 1e-2, f"cascade vs plain attention: max relative error {max(errors):.3g}"


def test_cascade_in_cuda_graphs_matches_plain_decode(smollm_gguf_path, monkeypatch):
    """20 requests on a cached ~600-token story decode through the captured cascade graphs (batch 20 replays the
    size-24 cascade graph, groups loaded into its buffers) and generate what plain decode generates. Natural text
    keeps the logits peaked, so bf16 rounding differences rarely flip a greedy token: 16 of 20 must match."""
    from lite_srt import Engine
    from lite_srt.engine import scheduler

    monkeypatch.setattr(scheduler, "MIN_SAVED_KEYS", 0)
    story = " ".join(
        f"Day {i}: the keeper of the lighthouse on the northern island wrote that the sea was calm, the lamp "
        "was clean and every ship passed safely."
        for i in range(20)
    )
    prompts = [f"{story}\nQuestion {q}: what did the keeper write on day {q}? Answer:" for q in range(20)]
    params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    outputs, replays = {}, {}
    for cascade in (True, False):
        e = Engine(
            model_path=smollm_gguf_path,
            device="cuda",
            dtype="bfloat16",
            max_total_tokens=65536,
            disable_cascade_attention=not cascade,
        )
        try:
            e.generate(prompt=story, sampling_params=params)  # caches the story
            outputs[cascade] = [o["output_ids"] for o in e.generate(prompt=prompts, sampling_params=params)]
            replays[cascade] = e.core.runner.graphs.cascade_replays
        finally:
            e.shutdown()
    assert replays[True] >= 5 and replays[False] == 0, replays  # 7 decode steps
    same = sum(a == b for a, b in zip(outputs[True], outputs[False]))
    assert same >= 16, f"only {same} of 20 generations match plain decode"


def test_balanced_key_splits_in_cuda_graphs_match_plain_decode(smollm_gguf_path, monkeypatch):
    """One ~1,200-token prompt decodes beside five short ones. With at least 64 keys per split
    (LITE_SRT_DECODE_MIN_KEYS) the step calls for more key splits than the one-wave plan, so replays take the
    balanced graph (the long request split finer than the short ones, keys per split from a device buffer) and
    must generate what the one-wave plan (LITE_SRT_DECODE_BALANCE=0) generates: 5 of 6 at least, as bf16
    summation order may flip a near-tie."""
    from lite_srt import Engine

    story = " ".join(
        f"Day {i}: the keeper wrote that the sea was calm and the lamp was clean." for i in range(70)
    )
    prompts = [f"{story}\nWhat did the keeper write? Answer:", *PROMPTS]
    params = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    monkeypatch.setenv("LITE_SRT_DECODE_MIN_KEYS", "64")
    outputs, replays = {}, {}
    for balance in ("1", "0"):
        monkeypatch.setenv("LITE_SRT_DECODE_BALANCE", balance)
        e = Engine(model_path=smollm_gguf_path, device="cuda", dtype="bfloat16", max_total_tokens=16384)
        try:
            outputs[balance] = [o["output_ids"] for o in e.generate(prompt=prompts, sampling_params=params)]
            replays[balance] = e.core.runner.graphs.balanced_replays
        finally:
            e.shutdown()
    assert replays["1"] >= 5 and replays["0"] == 0, replays
    same = sum(a == b for a, b in zip(outputs["1"], outputs["0"]))
    assert same >= 5, f"only {same} of 6 generations match the one-wave plan"
