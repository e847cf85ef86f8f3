"""Greedy output over HTTP (native and OpenAI routes) equals the offline `Engine.generate` output."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from lite_srt.client import AsyncClient
from lite_srt.server.process import ServerProcess

PROMPTS = ["The capital of Italy is", "def fibonacci(n):", "Three things to pack for a beach trip:"]
GREEDY = {"max_new_tokens": 16, "temperature": 0.0}


@pytest.fixture(scope="module")
def server_and_engine() -> Iterator[tuple[ServerProcess, Any]]:
    from lite_srt import Engine

    server = ServerProcess("--max-total-tokens", "4096").launch()
    engine = None
    try:
        engine = Engine(max_total_tokens=4096)  # loads while the server loads its copy
        server.wait_ready()
        yield server, engine
    finally:
        server.stop()
        if engine is not None:
            engine.shutdown()


@pytest.fixture(scope="module")
def offline(server_and_engine: tuple[ServerProcess, Any]) -> list[dict[str, Any]]:
    engine = server_and_engine[1]
    return [engine.generate(prompt=p, sampling_params=GREEDY) for p in PROMPTS]


@pytest.fixture
async def client(server_and_engine: tuple[ServerProcess, Any]) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server_and_engine[0].url) as c:
        yield c


async def test_native_generate_matches_engine(client: AsyncClient, offline: list[dict[str, Any]]) -> None:
    for prompt, ref in zip(PROMPTS, offline, strict=True):
        out = await client.generate(prompt, sampling_params=GREEDY)
        assert not isinstance(out, list)
        assert out.output_ids == ref["output_ids"]
        assert out.text == ref["text"]
        assert out.meta_info.finish_reason is not None
        assert out.meta_info.finish_reason.type == ref["meta_info"]["finish_reason"]["type"]


async def test_native_batch_and_stream_match_engine(
    client: AsyncClient, offline: list[dict[str, Any]]
) -> None:
    batch = await client.generate(PROMPTS, sampling_params=GREEDY)
    assert isinstance(batch, list)
    assert [b.output_ids for b in batch] == [r["output_ids"] for r in offline]
    last = None
    async for chunk in client.stream(PROMPTS[0], sampling_params=GREEDY):
        last = chunk
    assert last is not None and last.output_ids == offline[0]["output_ids"]


async def test_openai_completion_matches_engine(client: AsyncClient, offline: list[dict[str, Any]]) -> None:
    for prompt, ref in zip(PROMPTS, offline, strict=True):
        r = await client.complete(prompt, max_tokens=16, temperature=0)
        assert r.choices[0].text == ref["text"]
        assert r.usage is not None and r.usage.completion_tokens == len(ref["output_ids"])


async def test_openai_chat_matches_engine_on_chat_template(
    client: AsyncClient, server_and_engine: tuple[ServerProcess, Any]
) -> None:
    engine = server_and_engine[1]
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a red fruit."},
    ]
    ref = engine.generate(input_ids=engine.tokenizer.encode_chat(messages), sampling_params=GREEDY)
    r = await client.chat(messages, max_tokens=16, temperature=0)
    assert r.choices[0].message.content == ref["text"]
    assert r.usage is not None and r.usage.prompt_tokens == ref["meta_info"]["prompt_tokens"]
