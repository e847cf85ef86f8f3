"""Online serving benchmark in the manner of SGLang's bench_serving: drive a running lite_srt server.

    python scripts/bench_serving.py --base-url http://127.0.0.1:30000 --dataset random \\
        --num-prompts 200 --random-input-len 1024 --random-output-len 1024 --request-rate 16

Datasets: `random` (token-id prompts, lengths uniform in [range_ratio * L, L]), `shared-prefix` (groups of
prompts sharing a long system prompt: measures the radix cache) and `chat` (synthetic multi-turn chats sent to
/v1/chat/completions). Arrivals are Poisson at --request-rate (`inf` sends all at once), optionally capped by
--max-concurrency. Outputs ignore EOS unless --disable-ignore-eos, so output lengths are exact.

--draws sglang (the default) takes the random dataset's lengths and the arrival gaps from numpy's legacy
generator seeded with --seed, in the order SGLang's bench_serving draws them, so a run replays the very
workload behind SGLang's published numbers (prompt contents differ: theirs are ShareGPT text, ours random ids).
--draws lite is this script's earlier sampler (Python's `random`), kept to compare with older runs.

Reports request / input / output token throughput and TTFT, ITL, TPOT, E2E latency (mean, median, p99); prints
a table and writes JSON (--output-file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lite_srt.client import APIError, AsyncClient

# Low ids of BPE vocabularies are special and byte tokens; random prompts draw from above them.
_FIRST_PLAIN_TOKEN = 256
_WORDS = (
    "time year people way day man thing woman life child world school state family student group country problem "
    "hand part place case week company system program question work government number night point home water room "
    "mother area money story fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name president team minute idea"
).split()


# ---------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BenchRequest:
    output_len: int
    input_ids: list[int] | None = None  # token-id prompt (random, shared-prefix)
    messages: list[dict[str, str]] | None = None  # chat prompt
    input_len: int = 0  # known for token-id prompts; for chats, filled from the server's usage


@dataclass
class Draws:
    """Where a run's random numbers come from.

    `py` draws prompt contents and shuffles. With `np_state` set (--draws sglang), lengths and arrival gaps come
    from it instead, in SGLang's order: all input lengths, all output lengths, then one gap after each request.
    """

    py: random.Random
    np_state: np.random.RandomState | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Draws:
        np_state = np.random.RandomState(args.seed) if args.draws == "sglang" else None
        return cls(random.Random(args.seed), np_state)

    def lengths(self, n: int, full: int, ratio: float, *, low_one: bool) -> list[int]:
        """n lengths uniform in [ratio * full, full]; `low_one` lifts the bound to 1 as SGLang does for inputs.

        SGLang's output lengths may draw 0; a 0-token request is no decode, so it becomes 1 (after the draw,
        which keeps the stream identical).
        """
        if self.np_state is None:
            low = max(1, int(full * ratio))
            return [self.py.randint(low, max(low, full)) for _ in range(n)]
        low = max(int(full * ratio), 1) if low_one else int(full * ratio)
        return [max(1, int(x)) for x in self.np_state.randint(low, full + 1, size=n)]

    def gaps(self, n: int, rate: float) -> list[float]:
        """Seconds between consecutive requests: Poisson at `rate`, all zero for rate = inf (n - 1 gaps)."""
        if not math.isfinite(rate):
            return [0.0] * max(n - 1, 0)
        if self.np_state is None:
            return [self.py.expovariate(rate) for _ in range(max(n - 1, 0))]
        # SGLang draws a gap after every request, the last one included (and unused).
        return [float(x) for x in self.np_state.exponential(1.0 / rate, size=n)][: max(n - 1, 0)]


def _random_ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(_FIRST_PLAIN_TOKEN, vocab) for _ in range(n)]


def random_dataset(args: argparse.Namespace, vocab: int, draws: Draws) -> list[BenchRequest]:
    ins = draws.lengths(args.num_prompts, args.random_input_len, args.random_range_ratio, low_one=True)
    outs = draws.lengths(args.num_prompts, args.random_output_len, args.random_range_ratio, low_one=False)
    return [
        BenchRequest(o, input_ids=_random_ids(draws.py, i, vocab), input_len=i)
        for i, o in zip(ins, outs, strict=True)
    ]


def shared_prefix_dataset(args: argparse.Namespace, vocab: int, draws: Draws) -> list[BenchRequest]:
    rng = draws.py
    reqs = []
    for _ in range(args.sp_num_groups):
        system = _random_ids(rng, args.sp_system_prompt_len, vocab)
        for _ in range(args.sp_prompts_per_group):
            ids = system + _random_ids(rng, args.sp_question_len, vocab)
            reqs.append(BenchRequest(args.sp_output_len, input_ids=ids, input_len=len(ids)))
    rng.shuffle(reqs)
    return reqs[: args.num_prompts] if args.num_prompts else reqs


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def chat_dataset(args: argparse.Namespace, vocab: int, draws: Draws) -> list[BenchRequest]:
    """Synthetic conversations: a system prompt, 0..max_turns-1 earlier exchanges, then a question."""
    rng = draws.py
    reqs = []
    for _ in range(args.num_prompts):
        msgs = [{"role": "system", "content": "You are a helpful assistant. " + _sentence(rng, 12)}]
        for _ in range(rng.randrange(args.chat_max_turns)):
            msgs.append({"role": "user", "content": _sentence(rng, rng.randint(5, 40)) + " Why?"})
            msgs.append({"role": "assistant", "content": " ".join(_sentence(rng, 15) for _ in range(3))})
        msgs.append({"role": "user", "content": _sentence(rng, rng.randint(5, 60)) + " Explain."})
        reqs.append(BenchRequest(args.chat_output_len, messages=msgs))
    return reqs


DATASETS = {"random": random_dataset, "shared-prefix": shared_prefix_dataset, "chat": chat_dataset}


# ---------------------------------------------------------------------------------------------------------
# Running requests
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    ok: bool
    input_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)
    error: str = ""


def _sampling(req: BenchRequest, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_tokens": req.output_len,
        "temperature": args.temperature,
        "ignore_eos": not args.disable_ignore_eos,
        "stream_options": {"include_usage": True},
    }


async def _stream_one(client: AsyncClient, req: BenchRequest, args: argparse.Namespace) -> RequestResult:
    """One streamed request; a chunk with text marks token arrival (ITL is measured between such chunks)."""
    res = RequestResult(ok=False, input_len=req.input_len)
    t0 = last = time.perf_counter()
    kw = _sampling(req, args)
    if req.messages is not None:
        stream: Any = client.chat_stream(req.messages, **kw)
    else:
        stream = client.complete_stream(req.input_ids or [], **kw)
    try:
        async for chunk in stream:
            now = time.perf_counter()
            has_text = any(_chunk_text(c) for c in chunk.choices)
            if has_text:
                if res.ttft == 0.0:
                    res.ttft = now - t0
                else:
                    res.itls.append(now - last)
                last = now
            if chunk.usage is not None:
                res.output_len = chunk.usage.completion_tokens
                res.input_len = chunk.usage.prompt_tokens
        res.e2e = time.perf_counter() - t0
        res.ok = res.output_len > 0
    except (APIError, OSError, asyncio.TimeoutError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


def _chunk_text(choice: Any) -> str:
    return getattr(choice, "text", None) or (choice.delta.content if hasattr(choice, "delta") else "") or ""


async def _arrivals(n: int, rate: float, draws: Draws) -> Any:
    """Yield request indices at Poisson arrival times (all at once for rate = inf)."""
    gaps = draws.gaps(n, rate)
    for i in range(n):
        yield i
        if i < n - 1 and gaps[i] > 0.0:
            await asyncio.sleep(gaps[i])


async def run_benchmark(
    client: AsyncClient, reqs: list[BenchRequest], args: argparse.Namespace, draws: Draws
) -> tuple[list[RequestResult], float]:
    sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

    async def limited(req: BenchRequest) -> RequestResult:
        if sem is None:
            return await _stream_one(client, req, args)
        async with sem:
            return await _stream_one(client, req, args)

    tasks = []
    t0 = time.perf_counter()
    async for i in _arrivals(len(reqs), args.request_rate, draws):
        tasks.append(asyncio.create_task(limited(reqs[i])))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _summary(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    a = np.asarray(values) * scale
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p99": float(np.percentile(a, 99))}


def summarize(
    results: list[RequestResult], duration: float, args: argparse.Namespace, server: dict[str, Any]
) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    total_in = sum(r.input_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    tpots = [(r.e2e - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    return {
        "backend": "lite_srt",
        "base_url": args.base_url,
        "model": server.get("served_model_name"),
        "dataset": args.dataset,
        "num_prompts": len(results),
        "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
        "max_concurrency": args.max_concurrency,
        "ignore_eos": not args.disable_ignore_eos,
        "seed": args.seed,
        "draws": args.draws,
        "duration_s": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "input_throughput": total_in / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "concurrency": sum(r.e2e for r in ok) / duration,
        "ttft_ms": _summary([r.ttft for r in ok]),
        "itl_ms": _summary([x for r in ok for x in r.itls]),
        "tpot_ms": _summary(tpots),
        "e2e_ms": _summary([r.e2e for r in ok]),
        "server_args": server.get("server_args", {}),
    }


def print_table(s: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = [
        ("Dataset", str(s["dataset"])),
        ("Request rate (req/s)", str(s["request_rate"])),
        ("Max concurrency", str(s["max_concurrency"] or "-")),
        ("Successful / failed requests", f"{s['completed']} / {s['failed']}"),
        ("Benchmark duration (s)", f"{s['duration_s']:.2f}"),
        ("Total input tokens", str(s["total_input_tokens"])),
        ("Total output tokens", str(s["total_output_tokens"])),
        ("Request throughput (req/s)", f"{s['request_throughput']:.2f}"),
        ("Input token throughput (tok/s)", f"{s['input_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{s['output_throughput']:.2f}"),
        ("Total token throughput (tok/s)", f"{s['total_token_throughput']:.2f}"),
        ("Concurrency", f"{s['concurrency']:.2f}"),
        ("Prefix cache hit rate", f"{s.get('cache_hit_rate', 0.0):.3f}"),
    ]
    for key, name in (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E latency")):
        for stat in ("mean", "median", "p99"):
            rows.append((f"{stat.capitalize()} {name} (ms)", f"{s[key][stat]:.2f}"))
    width = max(len(k) for k, _ in rows) + 2
    print("=" * (width + 14))
    print(" lite_srt serving benchmark ".center(width + 14, "="))
    for k, v in rows:
        print(f"{k:<{width}}{v:>14}")
    print("=" * (width + 14))
    for e in s["errors"]:
        print("error:", e, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:30000", help="server URL")
    p.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    p.add_argument("--dataset", choices=tuple(DATASETS), default="random")
    p.add_argument("--num-prompts", type=int, default=200, help="requests to send (shared-prefix: 0 = all)")
    p.add_argument(
        "--request-rate", type=float, default=float("inf"), help="Poisson rate in req/s; inf = all at once"
    )
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight at once")
    p.add_argument("--seed", type=int, default=1, help="seeds prompts, lengths and arrival times")
    p.add_argument(
        "--draws",
        choices=("sglang", "lite"),
        default="sglang",
        help="sglang: lengths and arrivals drawn as SGLang's bench_serving draws them; lite: the earlier sampler",
    )
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--disable-ignore-eos", action="store_true", help="let requests stop at EOS")
    p.add_argument("--warmup-requests", type=int, default=1, help="untimed requests sent first")
    p.add_argument("--output-file", default=None, help="JSON results (default: bench_serving_<dataset>.json)")
    g = p.add_argument_group("random dataset")
    g.add_argument("--random-input-len", type=int, default=1024)
    g.add_argument("--random-output-len", type=int, default=1024)
    g.add_argument("--random-range-ratio", type=float, default=0.0, help="lengths uniform in [ratio*L, L]")
    g = p.add_argument_group("shared-prefix dataset")
    g.add_argument("--sp-num-groups", type=int, default=16)
    g.add_argument("--sp-prompts-per-group", type=int, default=16)
    g.add_argument("--sp-system-prompt-len", type=int, default=2048)
    g.add_argument("--sp-question-len", type=int, default=128)
    g.add_argument("--sp-output-len", type=int, default=256)
    g = p.add_argument_group("chat dataset")
    g.add_argument("--chat-max-turns", type=int, default=4, help="earlier exchanges per chat: 0..N-1")
    g.add_argument("--chat-output-len", type=int, default=256)
    args = p.parse_args(argv)
    if not 0.0 <= args.random_range_ratio <= 1.0:
        p.error("--random-range-ratio must be in [0, 1]")
    if args.request_rate <= 0:
        p.error("--request-rate must be > 0 (inf for all at once)")
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    draws = Draws.from_args(args)
    async with AsyncClient(args.base_url, api_key=args.api_key, timeout=24 * 3600) as client:
        if not await client.health():
            raise SystemExit(f"no lite_srt server answers at {args.base_url}/health")
        server = await client.server_info()
        vocab = int((await client.model_info())["vocab_size"])
        reqs = DATASETS[args.dataset](args, vocab, draws)
        for req in reqs[: args.warmup_requests]:
            await _stream_one(
                client, BenchRequest(min(16, req.output_len), req.input_ids, req.messages), args
            )
        before = await client.metrics()
        results, duration = await run_benchmark(client, reqs, args, draws)
        after = await client.metrics()
    summary = summarize(results, duration, args, server)
    summary["cache_hit_rate"] = _hit_rate(before, after)
    return summary


def _hit_rate(before: dict[str, float], after: dict[str, float]) -> float:
    """Share of this run's prompt tokens the server served from its prefix cache (from /metrics counters)."""
    prompt = after.get("lite_srt_prompt_tokens_total", 0.0) - before.get("lite_srt_prompt_tokens_total", 0.0)
    hits = after.get("lite_srt_cache_hit_tokens_total", 0.0) - before.get(
        "lite_srt_cache_hit_tokens_total", 0.0
    )
    return hits / prompt if prompt > 0 else 0.0


def _iter_json_safe(d: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        yield k, (v if not isinstance(v, float) or math.isfinite(v) else str(v))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(amain(args))
    print_table(summary)
    path = args.output_file or f"bench_serving_{args.dataset}.json"
    with open(path, "w") as f:
        json.dump(dict(_iter_json_safe(summary)), f, indent=2)
    print(f"wrote {path}")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
