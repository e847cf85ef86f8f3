"""Times the prefix caches' hot operations (match, insert, lock+unlock, evict) on a tree of ~100k tokens.

Workload: requests share one of a few long "system prompts" and add their own suffix, like a chat service.
For each implementation (Python RadixCache, C++ CppRadixCache when lite_srt._C has it) the script fills the
cache request by request (match, alloc, insert), then matches fresh prompts, then evicts it all in chunks.
Prints a table (microseconds per call and tokens/s) and writes JSON.

Usage: python scripts/bench_radix.py [--tokens 100000] [--page-size 1] [--out bench_radix.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from lite_srt.mem import KVAllocator, PrefixCache, RadixCache


@dataclass
class OpTiming:
    impl: str
    op: str
    calls: int
    tokens: int  # tokens processed (matched / inserted / evicted) over all calls
    seconds: float

    @property
    def us_per_call(self) -> float:
        return 1e6 * self.seconds / max(self.calls, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def make_prompts(total_tokens: int, num_prefixes: int, prefix_len: int, suffix_len: int, seed: int):
    """Prompts sharing one of num_prefixes prefixes; the distinct tokens add up to about total_tokens."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(32000) for _ in range(prefix_len)] for _ in range(num_prefixes)]
    num_prompts = max((total_tokens - num_prefixes * prefix_len) // suffix_len, 1)
    return [
        rng.choice(prefixes)
        + [rng.randrange(32000) for _ in range(rng.randint(suffix_len // 2, suffix_len * 3 // 2))]
        for _ in range(num_prompts)
    ]


def bench_impl(
    name: str, factory: Callable[[KVAllocator, int], PrefixCache], prompts, args
) -> list[OpTiming]:
    alloc = KVAllocator(args.pool_slots, args.page_size)
    cache = factory(alloc, args.page_size)
    out: dict[str, OpTiming] = {
        op: OpTiming(name, op, 0, 0, 0.0) for op in ("insert", "match", "lock+unlock", "evict")
    }

    def timed(op: str, fn, tokens: int):
        start = time.perf_counter()
        result = fn()
        out[op].seconds += time.perf_counter() - start
        out[op].calls += 1
        out[op].tokens += tokens
        return result

    for tokens in prompts:  # fill: what a finishing request does
        m = cache.match_prefix(tokens[:-1])
        cache.lock(m.handle)
        last = int(m.slots[-1]) if m.length else -1
        slots = torch.cat((m.slots, alloc.alloc(len(tokens) - m.length, last)))
        timed("insert", lambda t=tokens, s=slots, o=m.length: cache.insert(t, s, o), len(tokens))
        cache.unlock(m.handle)
    cache.check_integrity()
    cached = cache.size

    rng = random.Random(args.seed + 1)
    for _ in range(args.queries):
        base = rng.choice(prompts)
        query = base[: rng.randrange(1, len(base) + 1)] + [rng.randrange(32000) for _ in range(16)]
        m = timed("match", lambda q=query: cache.match_prefix(q), 0)
        out["match"].tokens += m.length
        timed("lock+unlock", lambda h=m.handle: (cache.lock(h), cache.unlock(h)), m.length)

    while cache.evictable_size:
        timed("evict", lambda: cache.evict(args.evict_chunk), 0)
        out["evict"].tokens = cached - cache.size
    cache.check_integrity()
    assert alloc.available_slots == alloc.total_slots, "bench leaked slots"
    return list(out.values())


def implementations() -> dict[str, Callable[[KVAllocator, int], PrefixCache]]:
    impls: dict[str, Callable[[KVAllocator, int], PrefixCache]] = {"python": RadixCache}
    try:
        from lite_srt.mem.radix_cache_cpp import CppRadixCache

        CppRadixCache(KVAllocator(1, 1), 1)
        impls["cpp"] = CppRadixCache
    except ImportError as e:
        print(f"skipping the C++ tree: {e}")
    return impls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=100_000, help="distinct tokens cached")
    parser.add_argument("--page-size", type=int, default=1)
    parser.add_argument("--num-prefixes", type=int, default=8)
    parser.add_argument("--prefix-len", type=int, default=2000)
    parser.add_argument("--suffix-len", type=int, default=400)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--evict-chunk", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_radix.json")
    args = parser.parse_args()
    # Room for the fill plus unaligned tails; eviction must never be needed during the fill.
    args.pool_slots = (2 * args.tokens // args.page_size + 1) * args.page_size

    prompts = make_prompts(args.tokens, args.num_prefixes, args.prefix_len, args.suffix_len, args.seed)
    results: list[OpTiming] = []
    for name, factory in implementations().items():
        results += bench_impl(name, factory, prompts, args)

    print(f"{len(prompts)} prompts, {sum(map(len, prompts))} prompt tokens, page_size {args.page_size}")
    print(f"{'impl':<8}{'op':<13}{'calls':>8}{'us/call':>12}{'Mtok/s':>10}")
    for r in results:
        print(f"{r.impl:<8}{r.op:<13}{r.calls:>8}{r.us_per_call:>12.1f}{r.tokens_per_s / 1e6:>10.2f}")
    report = {
        "args": vars(args),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "results": [
            asdict(r) | {"us_per_call": r.us_per_call, "tokens_per_s": r.tokens_per_s} for r in results
        ],
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
