"""Greedy exactness of the whole engine against transformers (float32) on the real SmolLM2 model.

Every configuration (radix cache on/off, a KV pool small enough to force retraction, chunked prefill) must give
token-for-token the same greedy output as `transformers.generate`, one request at a time and all at once.
"""

from __future__ import annotations

import pytest
import torch

from lite_srt import Engine

MAX_NEW = 24
LONG_TEXT = (
    "The history of computing is a story of abstraction layered on abstraction. Early machines were programmed "
    "by rewiring plugboards; then came stored programs, assemblers, compilers, operating systems, and networks. "
) * 8
PROMPTS = [
    "Hello",
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n',
    "请用一句话介绍一下北京。",
    "Emoji story: 🚀🌕👩‍🚀 The astronaut said",
    LONG_TEXT + "In summary,",
]
CHATS = [
    [{"role": "user", "content": "What is 2 + 2? Answer briefly."}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
]


@pytest.fixture(scope="module")
def cases(hf_reference) -> list[dict]:
    """Prompt ids and the reference greedy continuation + first-position top-5 logprobs from transformers."""
    model, tok = hf_reference
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    ids += [
        list(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)["input_ids"])
        for c in CHATS
    ]
    out = []
    for x in ids:
        with torch.no_grad():
            g = model.generate(
                torch.tensor([x]),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=tok.eos_token_id,
            )
        new = g.sequences[0, len(x) :].tolist()
        top = [torch.log_softmax(lg[0].float(), -1).topk(5) for lg in g.logits[:3]]
        out.append({"ids": x, "ref": new, "top": [(t.indices.tolist(), t.values.tolist()) for t in top]})
    assert 1 <= min(len(c["ids"]) for c in out) and max(len(c["ids"]) for c in out) >= 300
    return out


def _greedy(**extra) -> dict:
    return {"max_new_tokens": MAX_NEW, "temperature": 0.0, **extra}


def _check(cases: list[dict], results: list[dict]) -> None:
    for case, res in zip(cases, results):
        assert res["output_ids"] == case["ref"], f"prompt of {len(case['ids'])} tokens diverged"


def test_tokenizer_matches_reference(smollm_gguf_path, hf_reference):
    _, tok = hf_reference
    from lite_srt.tokenizer.tokenizer import load_tokenizer

    ours = load_tokenizer(smollm_gguf_path)
    for p in PROMPTS:
        assert ours.encode(p) == tok(p)["input_ids"]
    for c in CHATS:
        ref = list(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)["input_ids"])
        assert ours.encode_chat(c) == ref


@pytest.fixture(scope="module")
def engine(smollm_gguf_path):
    e = Engine(model_path=smollm_gguf_path, max_total_tokens=8192, chunked_prefill_size=256)
    yield e
    e.shutdown()


def test_greedy_one_at_a_time_matches_transformers(engine, cases):
    _check(cases, [engine.generate(input_ids=c["ids"], sampling_params=_greedy()) for c in cases])


def test_greedy_all_concurrent_matches_transformers(engine, cases):
    _check(cases, engine.generate(input_ids=[c["ids"] for c in cases], sampling_params=_greedy()))


def test_radix_cache_reuses_prefix_with_same_tokens(engine, cases):
    engine.generate(input_ids=[c["ids"] for c in cases], sampling_params=_greedy())  # warm the cache
    results = engine.generate(input_ids=[c["ids"] for c in cases], sampling_params=_greedy())
    _check(cases, results)
    long_case = max(range(len(cases)), key=lambda i: len(cases[i]["ids"]))
    assert results[long_case]["meta_info"]["cached_tokens"] >= len(cases[long_case]["ids"]) - 1


def test_top5_logprobs_match_transformers(engine, cases):
    for case in cases:
        res = engine.generate(
            input_ids=case["ids"], sampling_params=_greedy(max_new_tokens=3, top_logprobs=5, logprobs=True)
        )
        tops = res["meta_info"]["output_top_logprobs"]
        for (ref_ids, ref_vals), ours in zip(case["top"], tops):
            assert [t for _, t in ours] == ref_ids
            assert max(abs(v - r) for (v, _), r in zip(ours, ref_vals)) < 1e-4


def test_greedy_without_radix_cache_matches_transformers(smollm_gguf_path, cases):
    e = Engine(model_path=smollm_gguf_path, max_total_tokens=8192, disable_radix_cache=True)
    try:
        _check(cases, e.generate(input_ids=[c["ids"] for c in cases], sampling_params=_greedy()))
        _check(cases, [e.generate(input_ids=c["ids"], sampling_params=_greedy()) for c in cases])
        assert e.get_stats().kv_cached_tokens == 0
    finally:
        e.shutdown()


@pytest.mark.parametrize("disable_radix_cache", [False, True])
def test_retracted_requests_finish_with_same_tokens(smollm_gguf_path, cases, disable_radix_cache):
    longest = max(len(c["ids"]) for c in cases)
    # Room for the longest prompt and a little more: admitting greedily (conservativeness 0) must run out
    # of KV while decoding, so requests get retracted and resumed.
    e = Engine(
        model_path=smollm_gguf_path,
        max_total_tokens=longest + 96,
        schedule_conservativeness=0.0,
        disable_radix_cache=disable_radix_cache,
        chunked_prefill_size=128,
    )
    try:
        _check(cases, e.generate(input_ids=[c["ids"] for c in cases], sampling_params=_greedy()))
        stats = e.get_stats()
        assert stats.num_retractions_total > 0
        assert stats.kv_used_tokens == stats.kv_cached_tokens  # nothing owned once drained
    finally:
        e.shutdown()


def test_greedy_without_overlap_schedule_matches_transformers(smollm_gguf_path, cases):
    e = Engine(model_path=smollm_gguf_path, max_total_tokens=8192, disable_overlap_schedule=True)
    try:
        _check(cases, e.generate(input_ids=[c["ids"] for c in cases], sampling_params=_greedy()))
    finally:
        e.shutdown()


@pytest.mark.parametrize("mixed", [True, False])
def test_mixed_prefill_and_decode_steps_keep_greedy_exact(smollm_gguf_path, cases, mixed):
    """Small prefill chunks while others decode: with mixing, decodes ride along in the prefill steps."""
    e = Engine(
        model_path=smollm_gguf_path,
        max_total_tokens=8192,
        chunked_prefill_size=48,
        disable_mixed_chunk=not mixed,
    )
    try:
        _check(cases, e.generate(input_ids=[c["ids"] for c in cases], sampling_params=_greedy()))
        assert (e.core.scheduler.counters.mixed_steps > 0) == mixed
    finally:
        e.shutdown()
