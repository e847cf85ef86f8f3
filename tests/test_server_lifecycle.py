"""`lite-srt serve` process lifecycle: startup logs, load shedding (503), SIGTERM with requests in flight."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator

import aiohttp
import pytest

from lite_srt.server.process import CLI_COMMAND, ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--max-running-requests", "1", "--max-queued-requests", "1", "--max-total-tokens", "4096"
    ) as s:
        yield s


def test_lite_srt_serve_help_lists_the_server_flags() -> None:
    out = subprocess.run([*CLI_COMMAND, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in (
        "--model-path",
        "--host",
        "--port",
        "--api-key",
        "--max-queued-requests",
        "--served-model-name",
        "--chunked-prefill-size",
        "--disable-radix-cache",
    ):
        assert flag in out.stdout


def test_startup_log_names_the_model_kv_capacity_and_url(server: ServerProcess) -> None:
    log = server.log_text()
    assert re.search(r"KV capacity: 4096 tokens", log), log[-2000:]
    assert "SmolLM2-135M-Instruct" in log
    assert f"on {server.url} " in log and server.url.startswith("http://127.0.0.1:")


async def test_full_queue_answers_503_and_the_server_recovers(server: ServerProcess) -> None:
    body = {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 24, "ignore_eos": True}}

    async def post(s: aiohttp.ClientSession) -> tuple[int, dict]:
        async with s.post(server.url + "/generate", json=body) as r:
            return r.status, await r.json()

    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s) for _ in range(8)))
        statuses = sorted(st for st, _ in results)
        assert 200 in statuses and 503 in statuses, statuses
        for st, b in results:
            if st == 503:
                assert b["error"]["code"] == "queue_full" and "queue" in b["error"]["message"]
            else:
                assert b["meta_info"]["completion_tokens"] == 24
        status, _ = await post(s)
        assert status == 200


async def test_sigterm_aborts_in_flight_streams_and_exits_cleanly(server: ServerProcess) -> None:
    body = {
        "text": "Tell a very long story.",
        "stream": True,
        "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True},
    }
    events: list[bytes] = []
    async with aiohttp.ClientSession() as s, s.post(server.url + "/generate", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data:"):
                events.append(line.strip())
                if len(events) == 1:
                    assert server.proc is not None
                    server.proc.terminate()  # SIGTERM, as systemd or docker stop would send
                    t0 = time.monotonic()
    assert events[-1] == b"data: [DONE]"
    assert b'"abort"' in events[-2]  # the in-flight request ended as aborted, not cut off mid-body
    assert server.proc is not None
    code = await asyncio.to_thread(server.proc.wait, 30)
    assert code == 0
    assert time.monotonic() - t0 < 20
    assert "server stopped" in server.log_text()
