"""A real `lite-srt serve` (with --api-key) keeps serving through bad input, disconnects and load.

Checks: API key on every route but /health; every kind of bad input is a 400 with an OpenAI-style body and a
good request right after still succeeds; 64 concurrent streams; 50 mid-stream disconnects return the KV pool to
its idle accounting; metrics parse and move; the native and auxiliary routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from lite_srt.client import APIError, AsyncClient
from lite_srt.server.openapi import ROUTES
from lite_srt.server.process import ServerProcess

KEY = "test-key-123"
BODY_LIMIT = 65536
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--api-key", KEY, "--max-total-tokens", "16384", "--max-request-bytes", str(BODY_LIMIT)
    ) as s:
        yield s


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.url, api_key=KEY, timeout=300) as c:
        yield c


async def _idle_stats(client: AsyncClient, within: float) -> tuple[dict[str, Any], float]:
    """Poll until no request runs or waits and no KV slot is owned by a request; returns (stats, seconds)."""
    t0 = time.perf_counter()
    while True:
        s = (await client.server_info())["stats"]
        idle = (
            s["num_running"] == 0 and s["num_waiting"] == 0 and s["kv_used_tokens"] == s["kv_cached_tokens"]
        )
        waited = time.perf_counter() - t0
        if idle or waited > within:
            return s, waited
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------------------------
# Auth
# ------------------------------------------------------------------------------------------------------------


async def test_api_key_is_required_on_every_route_but_health(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s:
        for r in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                async with s.request(r.method, server.url + r.path, json={}, headers=headers) as resp:
                    if r.path == "/health":
                        assert resp.status == 200
                        continue
                    assert resp.status == 401, (r.path, headers)
                    body = await resp.json()
                    assert body["error"]["type"] == "authentication_error"
                    assert "API key" in body["error"]["message"]
        async with s.get(server.url + "/v1/models", headers=AUTH) as resp:
            assert resp.status == 200


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------

_CHAT = "/v1/chat/completions"
_CMPL = "/v1/completions"
_MSGS = [{"role": "user", "content": "hi"}]


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


BAD_INPUTS: list[tuple[str, str, bytes]] = [
    ("malformed_json", _CHAT, b'{"messages": [{"role": "user", "content": "hi"}'),
    ("not_an_object", _CHAT, b"[1, 2, 3]"),
    ("empty_body", _CMPL, b""),
    ("wrong_type_max_tokens", _CHAT, _j({"messages": _MSGS, "max_tokens": "ten"})),
    ("wrong_type_messages", _CHAT, _j({"messages": "hi"})),
    ("unknown_model", _CHAT, _j({"model": "gpt-4o", "messages": _MSGS})),
    ("negative_max_tokens", _CMPL, _j({"prompt": "hi", "max_tokens": -5})),
    ("absurd_max_tokens", _CMPL, _j({"prompt": "hi", "max_tokens": 10**12})),
    ("n_over_limit", _CHAT, _j({"messages": _MSGS, "n": 100000, "max_tokens": 1})),
    ("prompt_longer_than_context", _CMPL, _j({"prompt": " hello" * 9000, "max_tokens": 1})),
    ("empty_messages", _CHAT, _j({"messages": [], "max_tokens": 1})),
    ("invalid_utf8", _CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe bad"}]}'),
    ("body_over_size_limit", _CMPL, _j({"prompt": "x" * (BODY_LIMIT + 10)})),
    ("unknown_field", _CHAT, _j({"messages": _MSGS, "temprature": 0.5})),
    ("bad_role", _CHAT, _j({"messages": [{"role": "wizard", "content": "hi"}]})),
    (
        "image_part",
        _CHAT,
        _j({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    ),
    ("negative_temperature", _CMPL, _j({"prompt": "hi", "temperature": -1})),
    ("top_logprobs_too_many", _CHAT, _j({"messages": _MSGS, "logprobs": True, "top_logprobs": 500})),
    ("empty_prompt_list", _CMPL, _j({"prompt": []})),
    ("token_id_out_of_vocab", _CMPL, _j({"prompt": [1, 2, 10**9]})),
    ("token_id_bool", _CMPL, _j({"prompt": [1, True]})),
    ("token_id_float", _CMPL, _j({"prompt": [1, 2.5]})),
    ("token_id_mixed_with_text", _CMPL, _j({"prompt": [1, "hi"]})),
    (
        "native_negative_token_id",
        "/generate",
        _j({"input_ids": [5, -1], "sampling_params": {"max_new_tokens": 1}}),
    ),
    ("native_unknown_sampling_param", "/generate", _j({"text": "hi", "sampling_params": {"max_tokens": 3}})),
    ("native_no_prompt", "/generate", _j({"sampling_params": {"max_new_tokens": 3}})),
    ("detokenize_bad_ids", "/v1/detokenize", _j({"tokens": [-1]})),
]


@pytest.mark.parametrize("name,path,body", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_a_400_and_the_next_request_succeeds(
    server: ServerProcess, client: AsyncClient, name: str, path: str, body: bytes
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(server.url + path, data=body, headers=headers) as resp:
        assert resp.status == 400, (name, await resp.text())
        err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert set(err) == {"message", "type", "param", "code"}
    good = await client.complete("Hi", max_tokens=1)
    assert good.usage is not None and good.usage.completion_tokens == 1


async def test_bad_input_names_the_offending_param(client: AsyncClient) -> None:
    with pytest.raises(APIError) as e:
        await client.complete("hi", max_tokens=-5)
    assert (e.value.status, e.value.param) == (400, "max_tokens")
    with pytest.raises(APIError) as e:
        await client.chat(_MSGS, top_p=0.0)
    assert (e.value.status, e.value.param) == (400, "top_p")
    with pytest.raises(APIError) as e:
        await client.complete(" hello" * 9000, max_tokens=1)
    assert e.value.code == "context_length_exceeded"


# ------------------------------------------------------------------------------------------------------------
# Load, disconnects
# ------------------------------------------------------------------------------------------------------------


async def test_64_concurrent_streams_all_finish(client: AsyncClient) -> None:
    async def one(i: int) -> tuple[str, str | None, int]:
        text, finish, usage = "", None, -1
        async for chunk in client.complete_stream(
            f"Fact number {i}:",
            max_tokens=4,
            ignore_eos=True,
            temperature=0.7,
            seed=i,
            stream_options={"include_usage": True},
        ):
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
        return text, finish, usage

    results = await asyncio.gather(*(one(i) for i in range(64)))
    assert [r[1] for r in results] == ["length"] * 64
    assert [r[2] for r in results] == [4] * 64
    assert all(r[0] for r in results)
    stats, _ = await _idle_stats(client, within=5.0)
    assert stats["num_running"] == 0


async def test_50_mid_stream_disconnects_return_kv_to_idle(client: AsyncClient) -> None:
    before = (await client.server_info())["stats"]
    assert before["kv_used_tokens"] == before["kv_cached_tokens"]

    async def leave_after_first_chunk(i: int) -> None:
        stream = client.stream(
            f"Write a long essay about topic {i}.",
            sampling_params={"max_new_tokens": 500, "ignore_eos": True},
        )
        async with contextlib.aclosing(stream) as it:
            async for _ in it:
                break  # closing the generator drops the connection mid-stream

    await asyncio.gather(*(leave_after_first_chunk(i) for i in range(50)))
    stats, waited = await _idle_stats(client, within=3.0)
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0, stats
    assert stats["kv_used_tokens"] == stats["kv_cached_tokens"], stats  # nothing owned by a request
    assert waited < 1.0, f"KV freed only after {waited:.2f} s"
    assert stats["generation_tokens_total"] - before["generation_tokens_total"] < 50 * 500 / 4


async def test_non_streaming_client_timeout_aborts_the_request(
    server: ServerProcess, client: AsyncClient
) -> None:
    body = {
        "text": "Tell me everything about the sea.",
        "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True},
    }
    timeout = aiohttp.ClientTimeout(total=1.5)
    async with aiohttp.ClientSession(timeout=timeout, headers=AUTH) as s:
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(server.url + "/generate", json=body) as resp:
                await resp.read()
    stats, waited = await _idle_stats(client, within=3.0)
    assert stats["num_running"] == 0 and stats["kv_used_tokens"] == stats["kv_cached_tokens"], stats
    assert waited < 1.0


async def test_abort_request_ends_the_stream_with_abort(client: AsyncClient) -> None:
    rid = "abort-me-1"
    last = None
    async for chunk in client.stream(
        "Count to one thousand:", rid=rid, sampling_params={"max_new_tokens": 1000, "ignore_eos": True}
    ):
        if last is None:
            assert await client.abort(rid)
        last = chunk
    assert last is not None and last.meta_info.finish_reason is not None
    assert last.meta_info.finish_reason.type == "abort"
    assert last.meta_info.completion_tokens < 1000
    assert not await client.abort(rid)


# ------------------------------------------------------------------------------------------------------------
# Metrics and auxiliary routes
# ------------------------------------------------------------------------------------------------------------


async def test_metrics_parse_and_counters_move(client: AsyncClient) -> None:
    before = await client.metrics()
    out = await client.generate(
        input_ids=[504, 3575, 282], sampling_params={"max_new_tokens": 3, "ignore_eos": True}
    )
    assert not isinstance(out, list)
    after = await client.metrics()
    for name in (
        "lite_srt_num_running_requests",
        "lite_srt_num_queued_requests",
        "lite_srt_kv_usage_ratio",
        "lite_srt_cache_hit_rate",
    ):
        assert name in after
    assert after["lite_srt_prompt_tokens_total"] > before["lite_srt_prompt_tokens_total"]
    assert after["lite_srt_generation_tokens_total"] - before["lite_srt_generation_tokens_total"] >= 3
    for h in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert after[f"lite_srt_{h}_count"] == before.get(f"lite_srt_{h}_count", 0) + 1
    itl = "lite_srt_inter_token_latency_seconds_count"
    assert after[itl] - before.get(itl, 0) == 2  # three tokens, two gaps
    key = 'lite_srt_http_requests_total{route="/generate",status="200"}'
    assert after[key] == before.get(key, 0) + 1


async def test_openapi_documents_every_route_and_each_answers(
    server: ServerProcess, client: AsyncClient
) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(server.url + "/openapi.json") as resp:
            doc = await resp.json()
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                if method == "post" and path not in ("/flush_cache", "/stop_profile"):
                    assert "requestBody" in op, path
                async with s.request(method.upper(), server.url + path, json={}) as resp:
                    assert resp.status not in (404, 405, 500), (method, path, resp.status)
    assert {"/v1/chat/completions", "/v1/completions", "/generate", "/metrics"} <= set(doc["paths"])


async def test_info_health_tokenize_routes(client: AsyncClient) -> None:
    assert await client.health()
    [card] = await client.models()
    info = await client.model_info()
    assert info["context_length"] == card.max_model_len and info["vocab_size"] > 1000
    server_info = await client.server_info()
    assert server_info["server_args"]["api_key"] == "<redacted>"
    assert server_info["max_total_tokens"] == 16384
    ids = await client.tokenize("Hello world")
    assert await client.detokenize(ids) == "Hello world"
    async with aiohttp.ClientSession(headers=AUTH) as s, s.get(client.base_url + "/health_generate") as resp:
        assert resp.status == 200


async def test_profile_traces_the_forward_thread(client: AsyncClient, tmp_path) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.post(client.base_url + "/stop_profile") as resp:
            assert resp.status == 400 and "no profile is running" in (await resp.json())["error"]["message"]
        async with s.post(client.base_url + "/start_profile", json={"output_dir": str(tmp_path)}) as resp:
            assert resp.status == 200, await resp.text()
        async with s.post(client.base_url + "/start_profile") as resp:
            assert resp.status == 400 and "already running" in (await resp.json())["error"]["message"]
        await client.generate("Profile this", sampling_params={"max_new_tokens": 4})
        path = await client.stop_profile()
    assert os.path.dirname(path) == str(tmp_path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    # the forward thread's model ops are in it (a CPU server: aten ops of the decode steps)
    assert any(e.get("name", "").startswith("aten::") for e in events)


async def test_flush_cache_empties_the_prefix_cache_when_idle(client: AsyncClient) -> None:
    await client.generate("Some prompt to cache", sampling_params={"max_new_tokens": 2})
    await _idle_stats(client, within=3.0)
    assert await client.flush_cache()
    assert (await client.server_info())["stats"]["kv_cached_tokens"] == 0


async def test_native_generate_batches_and_n(client: AsyncClient) -> None:
    batch = await client.generate(
        ["The sky is", "Grass is"], sampling_params={"max_new_tokens": 3, "temperature": 0}
    )
    assert isinstance(batch, list) and [b.index for b in batch] == [0, 1]
    single = await client.generate("Grass is", sampling_params={"max_new_tokens": 3, "temperature": 0})
    assert not isinstance(single, list) and single.output_ids == batch[1].output_ids
    many = await client.generate(
        "Grass is",
        sampling_params={"max_new_tokens": 2, "n": 3, "ignore_eos": True},
        return_logprob=True,
        top_logprobs_num=2,
    )
    assert isinstance(many, list) and len(many) == 3
    for m in many:
        assert m.meta_info.output_token_logprobs is not None and len(m.meta_info.output_token_logprobs) == 2
        assert [t for _, t in m.meta_info.output_token_logprobs] == m.output_ids
