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
    group, prefix_groups.py) and give the greedy tokens of plain decode (--disable-cascade-attention). bfloat16,
    the only dtype with a cascade path: the two kernels round differently, so as against transformers the first
    8 tokens must match exactly."""
    from lite_srt import Engine
    from lite_srt.engine import scheduler

    monkeypatch.setattr(
        scheduler, "MIN_SAVED_KEYS", 0
    )  # 12 requests save fewer keys than the serving threshold
    prefix = [1000 + (i * 37) % 20000 for i in range(640)]
    prompts = [prefix + [30000 + 7 * q + i for i in range(5)] for q in range(12)]
    params = {"max_new_tokens": 16, "temperature": 0}
    outputs = {}
    for cascade in (True, False):
        e = Engine(
            model_path=smollm_gguf_path,
            device="cuda",
            dtype="bfloat16",
            max_total_tokens=32768,
            disable_cascade_attention=not cascade,
        )
        try:
            assert e.core.runner.cascade_attention
            e.generate(input_ids=prefix + [5], sampling_params=params)  # caches the prefix
            outputs[cascade] = [
                o["output_ids"] for o in e.generate(input_ids=prompts, sampling_params=params)
            ]
            steps = e.core.stats().cascade_steps_total
            assert steps > 0 if cascade else steps == 0
        finally:
            e.shutdown()
    for with_cascade, plain in zip(outputs[True], outputs[False]):
        assert with_cascade[:8] == plain[:8]
