"""The official `openai` client, unchanged, against a real `lite-srt serve` subprocess on the real model.

Token counts are checked against the transformers tokenizer of the same GGUF (an independent implementation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from lite_srt.server.process import ServerProcess

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server_and_tokenizer(smollm_gguf_path: str) -> Iterator[tuple[ServerProcess, Any]]:
    from transformers import AutoTokenizer

    server = ServerProcess("--max-total-tokens", "16384").launch()
    try:
        d, f = os.path.split(smollm_gguf_path)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)  # loads while the server loads the model
        server.wait_ready()
        yield server, tok
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hf_tok(server_and_tokenizer: tuple[ServerProcess, Any]) -> Any:
    return server_and_tokenizer[1]


@pytest.fixture(scope="module")
def client(server_and_tokenizer: tuple[ServerProcess, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server_and_tokenizer[0].url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


def test_chat_completion_usage_matches_the_reference_tokenizer(
    client: openai.OpenAI, model: str, hf_tok: Any
) -> None:
    r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    prompt_ids = hf_tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
        prompt_ids = prompt_ids["input_ids"]
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 12
    else:
        assert choice.finish_reason == "stop" and r.usage.completion_tokens <= 12


def test_completion_usage_counts_prompt_and_output_tokens(
    client: openai.OpenAI, model: str, hf_tok: Any
) -> None:
    prompt = "The three primary colors are"
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=6, temperature=0, logprobs=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.prompt_tokens == len(hf_tok(prompt).input_ids)
    assert r.usage.completion_tokens == 6 == len(r.choices[0].logprobs.tokens)
    assert r.choices[0].finish_reason == "length"
    assert "".join(r.choices[0].logprobs.tokens) == r.choices[0].text


def test_streamed_chat_equals_unstreamed_and_starts_with_role(client: openai.OpenAI, model: str) -> None:
    full = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=QUESTION,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_streamed_completion_equals_unstreamed(client: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {
        "model": model,
        "prompt": "List of fruits: apple,",
        "max_tokens": 8,
        "temperature": 0,
    }
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_n2_returns_two_choices_and_sums_completion_usage(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=5,
        n=2,
        temperature=1.0,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 10
    streamed = list(
        client.completions.create(
            model=model, prompt="Hello", max_tokens=3, n=2, stream=True, extra_body={"ignore_eos": True}
        )
    )
    ends = {c.choices[0].index: c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason}
    assert ends == {0: "length", 1: "length"}


def test_stop_string_trims_text_and_reports_stop(client: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {"model": model, "prompt": "Count: one, two, three, four, five,", "temperature": 0}
    free = client.completions.create(**kw, max_tokens=12, extra_body={"ignore_eos": True}).choices[0].text
    words = [w for w in free.split() if len(w) > 2]
    assert words, f"need a word to stop on in {free!r}"
    stop = words[1] if len(words) > 1 else words[0]
    r = client.completions.create(**kw, max_tokens=12, stop=[stop, "never-appears"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == free[: free.index(stop)]


def test_chat_logprobs_are_sorted_and_greedy_token_is_top(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for tok in content:
        tops = [t.logprob for t in tok.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert tok.logprob <= 0.0
        assert tok.logprob == pytest.approx(tops[0], abs=1e-4)  # greedy picks the most likely token
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_seed_makes_sampling_reproducible(client: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {
        "model": model,
        "prompt": "Once upon a time",
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 1234,
    }
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b


def test_prompt_as_token_ids_matches_prompt_as_text(client: openai.OpenAI, model: str, hf_tok: Any) -> None:
    prompt = "The largest planet in the solar system is"
    ids = hf_tok(prompt).input_ids
    by_text = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_echo_prepends_the_prompt(client: openai.OpenAI, model: str) -> None:
    prompt = "Water boils at"
    r = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0, echo=True)
    plain = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0)
    assert r.choices[0].text == prompt + plain.choices[0].text


def test_unknown_model_is_a_400_the_client_raises(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-9", messages=QUESTION, max_tokens=2)
    assert e.value.status_code == 400
    assert "gpt-9" in str(e.value)


def test_sampling_extras_take_effect(client: openai.OpenAI, model: str, server_and_tokenizer: Any) -> None:
    import json
    import urllib.request

    prompt = "Fruits: apple, apple, apple, apple,"
    base: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": 8}
    greedy = client.completions.create(**base, temperature=0).choices[0].text
    # top_k=1 samples the argmax whatever the temperature.
    assert (
        client.completions.create(**base, temperature=1.5, extra_body={"top_k": 1}).choices[0].text == greedy
    )
    # A strong frequency / repetition penalty moves greedy decoding off the repeated word.
    assert client.completions.create(**base, temperature=0, frequency_penalty=2.0).choices[0].text != greedy
    assert (
        client.completions.create(**base, temperature=0, extra_body={"repetition_penalty": 3.0})
        .choices[0]
        .text
        != greedy
    )
    # stop_token_ids: stop on the 3rd greedy token (its id from the native route).
    url = server_and_tokenizer[0].url + "/generate"
    body = json.dumps({"text": prompt, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body)) as r:
        ids = json.load(r)["output_ids"]
    stopped = client.completions.create(**base, temperature=0, extra_body={"stop_token_ids": [ids[2]]})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == ids.index(ids[2]) + 1
    # min_tokens keeps a chat going past the point where it would have stopped.
    short = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say OK."}], max_tokens=40, temperature=0
    )
    if short.choices[0].finish_reason == "stop":
        longer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say OK."}],
            max_tokens=40,
            temperature=0,
            extra_body={"min_tokens": short.usage.completion_tokens + 3},
        )
        assert longer.usage.completion_tokens >= short.usage.completion_tokens + 3
