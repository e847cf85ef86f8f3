"""lite_srt.client.AsyncClient against a real server: typed results, streaming, errors with status + message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lite_srt.client import APIError, AsyncClient
from lite_srt.server.process import ServerProcess
from lite_srt.server.protocol import ChatCompletionChunk, CompletionChunk, GenerateResult

KEY = "client-key"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--api-key", KEY, "--max-total-tokens", "4096", "--served-model-name", "tiny") as s:
        yield s


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.url, api_key=KEY, timeout=120) as c:
        yield c


async def test_generate_returns_typed_result(client: AsyncClient) -> None:
    out = await client.generate(
        "Hello, my name is", sampling_params={"max_new_tokens": 5, "ignore_eos": True}
    )
    assert isinstance(out, GenerateResult)
    assert len(out.output_ids) == 5 == out.meta_info.completion_tokens
    assert out.meta_info.finish_reason is not None and out.meta_info.finish_reason.type == "length"
    assert out.meta_info.prompt_tokens == len(await client.tokenize("Hello, my name is"))


async def test_stream_yields_growing_cumulative_chunks(client: AsyncClient) -> None:
    chunks = [
        c
        async for c in client.stream(
            "One, two, three,", sampling_params={"max_new_tokens": 6, "ignore_eos": True}
        )
    ]
    assert all(isinstance(c, GenerateResult) for c in chunks)
    lengths = [len(c.output_ids) for c in chunks]
    assert lengths == sorted(lengths) and lengths[-1] == 6
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.output_ids[: len(a.output_ids)] == a.output_ids
    assert chunks[-1].meta_info.finish_reason is not None


async def test_chat_and_complete_with_streaming(client: AsyncClient) -> None:
    msgs = [{"role": "user", "content": "Say hi."}]
    full = await client.chat(msgs, model="tiny", max_tokens=6, temperature=0)
    assert full.model == "tiny" and full.choices[0].message.content
    chunks = [c async for c in client.chat_stream(msgs, max_tokens=6, temperature=0)]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == full.choices[0].message.content
    )
    comp = await client.complete([1, 2, 3], max_tokens=3, ignore_eos=True)
    assert comp.usage is not None and comp.usage.prompt_tokens == 3 and comp.usage.completion_tokens == 3
    cchunks = [c async for c in client.complete_stream("Hi", max_tokens=3, ignore_eos=True)]
    assert all(isinstance(c, CompletionChunk) for c in cchunks)
    assert cchunks[-1].choices[0].finish_reason == "length"


async def test_server_errors_raise_with_status_message_and_param(client: AsyncClient) -> None:
    with pytest.raises(APIError) as e:
        await client.chat([{"role": "user", "content": "x"}], model="other-model")
    assert e.value.status == 400 and e.value.param == "model" and "other-model" in e.value.message
    with pytest.raises(APIError) as e:
        async for _ in client.stream("x", sampling_params={"temperature": -1.0}):
            pass
    assert e.value.status == 400 and e.value.param == "temperature"


async def test_wrong_key_is_401_but_health_needs_no_key(server: ServerProcess) -> None:
    async with AsyncClient(server.url, api_key="nope") as c:
        assert await c.health()
        with pytest.raises(APIError) as e:
            await c.models()
        assert e.value.status == 401 and e.value.code == "invalid_api_key"


async def test_health_is_false_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        async with AsyncClient(f"http://127.0.0.1:{port}", timeout=5) as c:
            assert not await c.health()


async def test_models_and_metrics(client: AsyncClient) -> None:
    [card] = await client.models()
    assert card.id == "tiny" and card.max_model_len and card.max_model_len > 0
    m = await client.metrics()
    assert m["lite_srt_kv_total_tokens"] == 4096


@pytest.mark.parametrize(
    "dataset,flags,expected_prompts,expected_output",
    [
        (
            "random",
            [
                "--num-prompts",
                "8",
                "--random-input-len",
                "32",
                "--random-output-len",
                "4",
                "--random-range-ratio",
                "1.0",
                "--request-rate",
                "50",
            ],
            8,
            32,
        ),
        (
            "shared-prefix",
            [
                "--num-prompts",
                "0",
                "--sp-num-groups",
                "2",
                "--sp-prompts-per-group",
                "3",
                "--sp-system-prompt-len",
                "64",
                "--sp-question-len",
                "8",
                "--sp-output-len",
                "3",
                "--max-concurrency",
                "2",
            ],
            6,
            18,
        ),
        ("chat", ["--num-prompts", "4", "--chat-output-len", "3"], 4, 12),
    ],
)
def test_bench_serving_drives_the_server_and_writes_json(
    server: ServerProcess,
    tmp_path: Path,
    dataset: str,
    flags: list[str],
    expected_prompts: int,
    expected_output: int,
) -> None:
    out = tmp_path / "bench.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_serving.py"
    r = subprocess.run(
        [
            sys.executable,
            str(script),
            "--base-url",
            server.url,
            "--api-key",
            KEY,
            "--dataset",
            dataset,
            "--output-file",
            str(out),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Output token throughput" in r.stdout
    s = json.loads(out.read_text())
    assert (s["completed"], s["failed"]) == (expected_prompts, 0)
    assert s["total_output_tokens"] == expected_output  # ignore_eos by default: exact lengths
    assert s["output_throughput"] == pytest.approx(expected_output / s["duration_s"])
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert set(s[key]) == {"mean", "median", "p99"}
    assert 0 < s["ttft_ms"]["mean"] <= s["e2e_ms"]["mean"]


def test_serving_bound_reports_the_latest_finishing_request() -> None:
    """scripts/serving_bound.py: the ceiling at each step time is set by max(arrival + output_len * step)."""
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    r = subprocess.run(
        [
            sys.executable,
            str(scripts / "serving_bound.py"),
            "--num-prompts",
            "20",
            "--random-input-len",
            "16",
            "--random-output-len",
            "64",
            "--request-rate",
            "4",
            "--step-ms",
            "1",
            "100",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(scripts.parent)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [
        line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| 1") and "ms" not in line
    ]
    assert [float(row[0]) for row in rows] == [1.0, 100.0]
    slow, fast = float(rows[1][1]), float(rows[0][1])
    assert slow > fast  # a slower step can only end the run later
    total = int(r.stdout.split(" requests, ")[1].split(" output")[0])
    assert float(rows[1][3].replace(",", "")) == pytest.approx(total / slow, rel=1e-2)


def test_sglang_draws_replay_sglang_bench_serving_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    """--draws sglang gives the lengths SGLang's bench_serving prints for its defaults (seed 1, range ratio 0):
    100 prompts of random 1024/1024 -> "#Input tokens: 50561, #Output tokens: 52135" (sgl-project/sglang#9812)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    import bench_serving as bs

    args = bs.parse_args(["--num-prompts", "100", "--request-rate", "16"])
    assert args.draws == "sglang"
    draws = bs.Draws.from_args(args)
    reqs = bs.random_dataset(args, 128256, draws)
    assert sum(r.input_len for r in reqs) == 50561
    assert sum(r.output_len for r in reqs) == 52135
    gaps = draws.gaps(100, 16.0)
    assert len(gaps) == 99 and all(g >= 0 for g in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 16, rel=0.3)
    # The earlier sampler stays available and differs.
    lite_args = bs.parse_args(["--num-prompts", "100", "--draws", "lite"])
    lite = bs.random_dataset(lite_args, 128256, bs.Draws.from_args(lite_args))
    assert sum(r.input_len for r in lite) != 50561
