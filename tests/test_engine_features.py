"""Engine behaviour on the real model: sampling controls, stop handling, n>1, streaming, abort, validation."""

from __future__ import annotations

import asyncio

import pytest

from lite_srt import Engine
from lite_srt.errors import ContextLengthExceededError, InvalidRequestError

PROMPT = "Once upon a time, in a small village by the sea,"
OTHER = ["The weather today is", "List three fruits:", "def add(a, b):"]


@pytest.fixture(scope="module")
def engine(smollm_gguf_path):
    e = Engine(model_path=smollm_gguf_path, max_total_tokens=4096, page_size=4, chunked_prefill_size=64)
    yield e
    e.shutdown()


def _drained(engine: Engine) -> None:
    s = engine.get_stats()
    assert s.num_running == 0 and s.num_waiting == 0
    assert s.kv_used_tokens == s.kv_cached_tokens, "requests still own KV after draining"


def test_seed_gives_same_text_whatever_the_batch(engine):
    params = {"max_new_tokens": 20, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    alone = engine.generate(prompt=PROMPT, sampling_params=params)
    mixed = engine.generate(
        prompt=OTHER + [PROMPT], sampling_params=[{"max_new_tokens": 7, "temperature": 1.0}] * 3 + [params]
    )
    assert mixed[-1]["output_ids"] == alone["output_ids"]
    other_seed = engine.generate(prompt=PROMPT, sampling_params={**params, "seed": 99})
    assert other_seed["output_ids"] != alone["output_ids"]
    _drained(engine)


def test_top_k_1_equals_greedy(engine):
    greedy = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 16, "temperature": 0})
    topk1 = engine.generate(
        prompt=PROMPT, sampling_params={"max_new_tokens": 16, "temperature": 1.3, "top_k": 1, "seed": 5}
    )
    assert topk1["output_ids"] == greedy["output_ids"]


def test_stop_string_spanning_tokens_is_trimmed(engine):
    full = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 24, "temperature": 0})
    text = full["text"]
    tok = engine.tokenizer
    # Find a stop string that starts inside one token and ends in a later one.
    pieces = [tok.decode([t]) for t in full["output_ids"]]
    start = len(pieces[0]) + len(pieces[1]) - 1  # last char of token 1 ...
    stop = text[start : start + len(pieces[2]) + 2]  # ... through the start of token 3
    assert len(stop) >= 3 and text.count(stop) >= 1
    out = engine.generate(
        prompt=PROMPT, sampling_params={"max_new_tokens": 24, "temperature": 0, "stop": [stop]}
    )
    assert out["text"] == text[: text.index(stop)]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}


def test_stop_token_ids_and_max_tokens_finish_reasons(engine):
    full = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 10, "temperature": 0})
    assert full["meta_info"]["finish_reason"]["type"] == "length"
    assert full["meta_info"]["completion_tokens"] == 10
    stop_tok = full["output_ids"][4]
    out = engine.generate(
        prompt=PROMPT, sampling_params={"max_new_tokens": 10, "temperature": 0, "stop_token_ids": [stop_tok]}
    )
    first = full["output_ids"].index(stop_tok)
    assert out["output_ids"] == full["output_ids"][: first + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_tok}


def test_min_new_tokens_and_ignore_eos(engine):
    chat = engine.tokenizer.encode_chat(
        [{"role": "user", "content": "What is 2+2? Reply with just the number."}]
    )
    short = engine.generate(input_ids=chat, sampling_params={"max_new_tokens": 64, "temperature": 0})
    assert short["meta_info"]["finish_reason"]["type"] == "stop"  # the model ends its answer with EOS
    n = short["meta_info"]["completion_tokens"]
    forced = engine.generate(
        input_ids=chat, sampling_params={"max_new_tokens": 64, "temperature": 0, "min_new_tokens": n + 5}
    )
    assert forced["meta_info"]["completion_tokens"] >= n + 5
    ignored = engine.generate(
        input_ids=chat, sampling_params={"max_new_tokens": n + 8, "temperature": 0, "ignore_eos": True}
    )
    assert ignored["meta_info"]["completion_tokens"] == n + 8
    assert ignored["meta_info"]["finish_reason"]["type"] == "length"


def test_n_samples_share_prompt_kv_and_differ(engine):
    engine.flush_cache()
    prompt = PROMPT * 6  # long enough that sharing is visible
    outs = engine.generate(
        prompt=prompt, sampling_params={"max_new_tokens": 12, "temperature": 1.0, "n": 4, "seed": 7}
    )
    assert [o["index"] for o in outs] == [0, 1, 2, 3]
    assert len({tuple(o["output_ids"]) for o in outs}) > 1
    plen = outs[0]["meta_info"]["prompt_tokens"]
    # Every sample reused the prompt KV computed once (all but the last, page-aligned).
    assert all(o["meta_info"]["cached_tokens"] == (plen - 1) // 4 * 4 for o in outs)
    # Sample i is the same stream as a single request seeded seed + i.
    single = engine.generate(
        prompt=prompt, sampling_params={"max_new_tokens": 12, "temperature": 1.0, "seed": 9}
    )
    assert single["output_ids"] == outs[2]["output_ids"]
    _drained(engine)


def test_logprobs_of_chosen_tokens(engine):
    out = engine.generate(
        prompt=PROMPT,
        sampling_params={"max_new_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 3},
    )
    lps = out["meta_info"]["output_token_logprobs"]
    tops = out["meta_info"]["output_top_logprobs"]
    assert [t for _, t in lps] == out["output_ids"]
    for (lp, tok), top in zip(lps, tops):
        assert len(top) == 3 and top[0][1] == tok and abs(top[0][0] - lp) < 1e-6  # greedy picks the top one
        assert top[0][0] >= top[1][0] >= top[2][0]


def test_penalties_reduce_repetition(engine):
    base = {"max_new_tokens": 24, "temperature": 0}

    def repeats(prompt: str, extra: dict) -> int:
        ids = engine.generate(prompt=prompt, sampling_params={**base, **extra})["output_ids"]
        return len(ids) - len(set(ids))

    ones, ab = "1, 1, 1, 1, 1, 1, 1, 1,", "a b a b a b a b"  # greedy decoding keeps repeating both
    assert repeats(ones, {}) >= 15 and repeats(ab, {}) >= 15
    # Frequency grows with each repeat; presence is a flat cost once a token appeared; both add up.
    assert (
        repeats(ones, {"frequency_penalty": 2.0})
        < repeats(ones, {"frequency_penalty": 1.0})
        < repeats(ones, {})
    )
    assert repeats(ab, {"presence_penalty": 2.0}) < repeats(ab, {})
    assert repeats(ones, {"frequency_penalty": 2.0, "presence_penalty": 2.0}) < repeats(
        ones, {"frequency_penalty": 2.0}
    )
    assert repeats(ones, {"repetition_penalty": 2.0}) < repeats(ones, {})


def test_invalid_sampling_params_raise_value_error(engine):
    for bad in (
        {"max_new_tokens": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"temperature": -0.1},
        {"n": 0},
        {"top_k": -2},
        {"min_p": 2},
        {"bogus": 1},
        {"min_new_tokens": 5, "max_new_tokens": 2},
    ):
        with pytest.raises(ValueError):
            engine.generate(prompt=PROMPT, sampling_params=bad)
    with pytest.raises(InvalidRequestError):
        engine.generate(input_ids=[10**9], sampling_params={"max_new_tokens": 2})
    with pytest.raises(ContextLengthExceededError):
        engine.generate(input_ids=[5] * 5000, sampling_params={"max_new_tokens": 2})  # > KV pool of 4096
    assert engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 0})["output_ids"] == []
    _drained(engine)


def test_streaming_and_abort(engine):
    async def main() -> tuple[list[dict], list[dict]]:
        chunks = [
            c
            async for c in engine.async_generate_stream(
                prompt=PROMPT, sampling_params={"max_new_tokens": 12, "temperature": 0}
            )
        ]
        partial = []
        stream = engine.async_generate_stream(
            prompt=PROMPT, sampling_params={"max_new_tokens": 500, "temperature": 0, "ignore_eos": True}
        )
        async for c in stream:
            partial.append(c)
            if len(partial) == 3:
                break
        await stream.aclose()
        return chunks, partial

    chunks, partial = asyncio.run(main())
    full = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 12, "temperature": 0})
    assert "".join(c["delta"] for c in chunks) == full["text"] == chunks[-1]["text"]
    assert chunks[-1]["finished"] and not chunks[0]["finished"]
    assert len(partial) == 3
    _wait_drained(engine)


def test_abort_by_rid_finishes_with_abort(engine):
    import threading

    result: dict = {}

    def run() -> None:
        result["out"] = engine.generate(
            prompt=PROMPT,
            rid="abort-me",
            sampling_params={"max_new_tokens": 2000, "temperature": 0, "ignore_eos": True},
        )

    t = threading.Thread(target=run)
    t.start()
    for _ in range(200):
        if engine.abort("abort-me"):
            break
        threading.Event().wait(0.01)
    t.join(timeout=60)
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "abort"
    assert result["out"]["meta_info"]["completion_tokens"] < 2000
    _wait_drained(engine)


def _wait_drained(engine: Engine) -> None:
    for _ in range(100):
        s = engine.get_stats()
        if s.num_running == 0 and s.num_waiting == 0:
            break
        threading_wait(0.02)
    _drained(engine)


def threading_wait(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_overlap_schedule_gives_same_sampled_tokens(smollm_gguf_path):
    """Overlap builds step N+1 before step N's tokens are processed; sampled output must not change."""
    params = {"max_new_tokens": 16, "temperature": 0.8, "seed": 3, "n": 2, "repetition_penalty": 1.0}
    outs = {}
    for overlap in (True, False):
        e = Engine(model_path=smollm_gguf_path, max_total_tokens=2048, disable_overlap_schedule=not overlap)
        try:
            outs[overlap] = [
                o["output_ids"] for o in e.generate(prompt=[PROMPT] + OTHER, sampling_params=params)
            ]
            # a penalised request forces a sync step in overlap mode; still the same tokens
            outs[overlap].append(
                e.generate(prompt=PROMPT, sampling_params={**params, "n": 1, "frequency_penalty": 1.0})[
                    "output_ids"
                ]
            )
        finally:
            e.shutdown()
    assert outs[True] == outs[False]


def test_queued_requests_reuse_a_prefix_still_running(engine):
    """A prompt enters the radix cache when its prefill is done, not when it finishes, so requests queued
    behind it reuse the shared system prompt while it is still decoding."""
    engine.flush_cache()
    system = "You are a meticulous assistant. " * 30
    prompts = [system + q for q in ("Name a color.", "Name a fruit.", "Name an animal.", "Name a city.")]
    outs = engine.generate(prompt=prompts, sampling_params={"max_new_tokens": 8, "temperature": 0})
    shared = len(engine.tokenizer.encode(system)) - 2
    assert outs[0]["meta_info"]["cached_tokens"] == 0
    # The second request may start in the step that runs the first one's last chunk (before that prompt is
    # cached); every request admitted after that step reuses the prefix.
    assert all(o["meta_info"]["cached_tokens"] >= shared for o in outs[2:])
    alone = [
        engine.generate(prompt=p, sampling_params={"max_new_tokens": 8, "temperature": 0}) for p in prompts
    ]
    assert [o["output_ids"] for o in outs] == [a["output_ids"] for a in alone]
    _drained(engine)


def test_cache_hit_counters_stay_within_prompt_tokens(engine):
    before = engine.get_stats()
    prompt = "A shared prefix for the counters test. " * 10
    engine.generate(prompt=[prompt + "one", prompt + "two"], sampling_params={"max_new_tokens": 2})
    engine.generate(prompt=prompt + "three", sampling_params={"max_new_tokens": 2})
    after = engine.get_stats()
    prompt_delta = after.prompt_tokens_total - before.prompt_tokens_total
    hit_delta = after.cache_hit_tokens_total - before.cache_hit_tokens_total
    assert prompt_delta == sum(len(engine.tokenizer.encode(prompt + s)) for s in ("one", "two", "three"))
    assert 0 < hit_delta < prompt_delta


def test_gil_switch_interval_follows_the_env(monkeypatch) -> None:
    from lite_srt.engine.async_engine import _gil_switch_interval

    monkeypatch.delenv("LITE_SRT_SWITCH_INTERVAL_MS", raising=False)
    assert _gil_switch_interval() is None  # Python's own interval
    monkeypatch.setenv("LITE_SRT_SWITCH_INTERVAL_MS", "2")
    assert _gil_switch_interval() == pytest.approx(0.002)
    monkeypatch.setenv("LITE_SRT_SWITCH_INTERVAL_MS", "0")
    assert _gil_switch_interval() is None
