"""Tensor parallelism on the CPU (gloo, --tp 2): shard arithmetic, sliced weight reads, and the real model's
greedy output through Engine(tp_size=2) and `lite-srt serve --tp 2` against tp 1, plus a worker dying."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import aiohttp
import openai
import pytest
import torch

from lite_srt import Engine
from lite_srt.config import ServerArgs
from lite_srt.distributed.partition import split, split_heads
from lite_srt.errors import InvalidRequestError
from lite_srt.loader.gguf_loader import GGUFFile, iter_gguf_sources
from lite_srt.mem.req_table import ReqToTokenTable
from lite_srt.server.process import ServerProcess

PROMPTS = [
    "Hello",
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n',
    "请用一句话介绍一下北京。",
    "Emoji story: 🚀🌕👩‍🚀 The astronaut said",
    "The history of computing is a story of abstraction layered on abstraction. " * 12 + "In summary,",
]
GREEDY = {"max_new_tokens": 24, "temperature": 0.0}


# -- shard arithmetic ----------------------------------------------------------------------------------------
def test_split_covers_the_dimension_without_overlap() -> None:
    for total, size in [(1536, 2), (14336, 4), (49152, 2), (100, 3), (7, 2), (128256, 8)]:
        spans = [split(total, r, size) for r in range(size)]
        assert spans[0].start == 0 and spans[-1].end == total
        assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
        assert all(s.size > 0 for s in spans)


def test_uneven_heads_give_whole_kv_groups_per_rank() -> None:
    # SmolLM2-135M: 9 query heads in 3 KV groups of 3
    r0, r1 = split_heads(9, 3, 0, 2), split_heads(9, 3, 1, 2)
    assert (r0.kv.start, r0.kv.size, r1.kv.start, r1.kv.size) == (0, 1, 1, 2)
    assert (r0.q.start, r0.q.size, r1.q.start, r1.q.size) == (0, 3, 3, 6)


def test_fewer_kv_heads_than_ranks_replicates_kv_heads() -> None:
    spans = [split_heads(32, 2, r, 4) for r in range(4)]
    assert [s.kv.start for s in spans] == [0, 0, 1, 1] and all(s.kv.size == 1 for s in spans)
    assert [s.q.start for s in spans] == [0, 8, 16, 24] and all(s.q.size == 8 for s in spans)
    with pytest.raises(InvalidRequestError, match="tp"):
        split_heads(9, 3, 0, 4)  # 4 ranks can neither split 3 KV heads nor 9 query heads


def test_parallel_flags_are_validated() -> None:
    with pytest.raises(InvalidRequestError, match="tp-size"):
        ServerArgs(tp_size=0)
    with pytest.raises(InvalidRequestError, match="nnodes"):
        ServerArgs(tp_size=3, nnodes=2)
    with pytest.raises(InvalidRequestError, match="dist-init-addr"):
        ServerArgs(tp_size=2, nnodes=2)
    with pytest.raises(InvalidRequestError, match="node-rank"):
        ServerArgs(tp_size=2, nnodes=2, node_rank=2, dist_init_addr="127.0.0.1:1")


# -- sliced reads ------------------------------------------------------------------------------------------
def test_gguf_slices_equal_slices_of_the_whole_tensor(smollm_gguf_path: str) -> None:
    sources = dict(iter_gguf_sources(GGUFFile.open(smollm_gguf_path)))
    q = sources["model.layers.0.self_attn.q_proj.weight"]  # llama.cpp-permuted rows, undone per head
    full = q.read()
    assert torch.equal(q.read(0, 192, 384), full[192:576])
    o = sources["model.layers.0.self_attn.o_proj.weight"]
    full = o.read()
    assert torch.equal(o.read(1, 192, 384), full[:, 192:576])  # block-aligned columns
    assert torch.equal(o.read(1, 5, 70), full[:, 5:75])  # not aligned: dequantized whole, then narrowed
    emb = sources["model.embed_tokens.weight"]
    assert torch.equal(emb.read(0, 24576, 24576), emb.read()[24576:])


def test_replayed_table_writes_keep_the_last_write_of_each_entry() -> None:
    src, dst = ReqToTokenTable(4, 16, "cpu"), ReqToTokenTable(4, 16, "cpu")
    src.enable_journal()
    row = src.alloc()
    assert row is not None
    src.write(row, 0, torch.tensor([5, 6, 7]))
    src.write(row, 1, torch.tensor([9]))  # rewrites entry 1
    src.write_many(torch.tensor([row, row]), torch.tensor([3, 4]), torch.tensor([11, 12]))
    dst.apply(*src.drain_journal())
    assert torch.equal(dst.table, src.table)
    assert all(t.numel() == 0 for t in src.drain_journal())


# -- the real model at tp 2 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tp1_outputs(smollm_gguf_path: str) -> list[list[int]]:
    e = Engine(model_path=smollm_gguf_path, max_total_tokens=8192)
    try:
        return [r["output_ids"] for r in e.generate(PROMPTS, sampling_params=GREEDY)]
    finally:
        e.shutdown()


@pytest.fixture(scope="module")
def tp2_engine(smollm_gguf_path: str):
    # A pool too small for all prompts at once (requests are retracted and resumed, table rows reused: the
    # table writes the worker replays must follow all of it) and 64-token chunks mixed with decodes.
    e = Engine(
        model_path=smollm_gguf_path,
        tp_size=2,
        max_total_tokens=300,
        schedule_conservativeness=0.0,
        chunked_prefill_size=64,
    )
    yield e
    e.shutdown()


def test_tp2_greedy_matches_tp1_token_for_token(tp2_engine: Engine, tp1_outputs: list[list[int]]) -> None:
    results = tp2_engine.generate(PROMPTS, sampling_params=GREEDY)
    assert [r["output_ids"] for r in results] == tp1_outputs
    counters = tp2_engine.core.scheduler.counters
    assert counters.mixed_steps > 0 and counters.retractions > 0


def test_tp2_radix_hits_and_parallel_samples_stay_exact(
    tp2_engine: Engine, tp1_outputs: list[list[int]]
) -> None:
    long = PROMPTS[-1]
    first = tp2_engine.generate(long, sampling_params=GREEDY)
    again = tp2_engine.generate(long, sampling_params={**GREEDY, "n": 2})
    assert first["output_ids"] == tp1_outputs[-1]
    assert [r["output_ids"] for r in again] == [tp1_outputs[-1]] * 2
    assert again[0]["meta_info"]["cached_tokens"] > 0


def test_second_tensor_parallel_engine_in_one_process_is_refused(
    tp2_engine: Engine, smollm_gguf_path: str
) -> None:
    with pytest.raises(RuntimeError, match="one tensor-parallel engine per process"):
        Engine(model_path=smollm_gguf_path, tp_size=2, max_total_tokens=300)
    assert tp2_engine.generate(PROMPTS[0], sampling_params=GREEDY)["output_ids"]


# -- the server at tp 2 ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tp2_server(smollm_gguf_path: str):
    with ServerProcess("--model-path", smollm_gguf_path, "--tp", "2", "--max-total-tokens", "8192") as s:
        yield s


def test_tp2_server_completions_match_tp1(tp2_server: ServerProcess, tp1_outputs: list[list[int]]) -> None:
    client = openai.OpenAI(base_url=tp2_server.url + "/v1", api_key="unused")
    for prompt, ref in zip(PROMPTS[:3], tp1_outputs):
        ids, text = _native_generate(tp2_server.url, prompt)
        assert ids == ref
        out = client.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", prompt=prompt, max_tokens=24, temperature=0
        )
        assert out.choices[0].text == text


def test_tp2_server_streams_chat(tp2_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=tp2_server.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text


async def test_worker_death_fails_in_flight_requests_and_exits_nonzero(smollm_gguf_path: str) -> None:
    with ServerProcess("--model-path", smollm_gguf_path, "--tp", "2", "--max-total-tokens", "8192") as s:
        m = re.search(r"started tensor-parallel rank 1 \(pid (\d+)\)", s.log_text())
        assert m, s.log_text()[-2000:]
        body = {
            "text": "Tell a long story.",
            "stream": True,
            "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True},
        }
        chunks: list[bytes] = []
        async with aiohttp.ClientSession() as session, session.post(s.url + "/generate", json=body) as r:
            async for line in r.content:
                if line.startswith(b"data:"):
                    chunks.append(line)
                    if len(chunks) == 3:
                        subprocess.run(["kill", "-9", m.group(1)], check=True)
        assert b"[DONE]" in chunks[-1] or b"error" in b"".join(chunks[-2:]), chunks[-3:]
        assert any(b"error" in c or b"abort" in c for c in chunks[-3:]), chunks[-3:]
        assert s.proc is not None
        code = await asyncio.to_thread(s.proc.wait, 30)
        assert code != 0


def test_two_node_launch_on_one_machine_matches_tp1(
    smollm_gguf_path: str, tp1_outputs: list[list[int]]
) -> None:
    """--nnodes 2: node 1 hosts rank 1 and no server; node 0 serves. Both on localhost here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{sock.getsockname()[1]}"
    flags = ["--model-path", smollm_gguf_path, "--tp", "2", "--nnodes", "2", "--dist-init-addr", addr]
    node1 = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lite_srt.server.launch",
            *flags,
            "--node-rank",
            "1",
            "--max-total-tokens",
            "8192",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with ServerProcess(*flags, "--max-total-tokens", "8192") as s:
            assert _native_generate(s.url, PROMPTS[1])[0] == tp1_outputs[1]
        assert node1.wait(30) == 0  # stop reached rank 1 through the group, and it exited cleanly
    finally:
        if node1.poll() is None:
            node1.send_signal(signal.SIGKILL)
            node1.wait()


def _native_generate(url: str, prompt: str) -> tuple[list[int], str]:
    body = json.dumps({"text": prompt, "sampling_params": GREEDY}).encode()
    req = urllib.request.Request(url + "/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        out = json.loads(r.read())
    return out["output_ids"], out["text"]
