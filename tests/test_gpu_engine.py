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
