"""Extend attention on the chunks a chunked-prefill server runs for the random workload, not on uniform batches.

  python scripts/bench_extend_chunks.py [--max-input 8192] [--chunk 8192] [--chunks 12] [--scatter]
      [--kernels default wgmma_ws64] [--json out.json]

Prompt lengths are drawn as bench_serving.py's random dataset draws them (uniform in 1..max-input, seeded) and cut
into chunks the way the scheduler cuts them: each chunk first continues the prompt the previous chunk split, then
takes whole prompts until the token budget ends inside one. Every chunk runs through `_C.extend_attention_cuda`
(Llama-3.1-8B heads: 32 q / 8 KV, d=128, bf16) with each kernel of --kernels (LITE_SRT_EXTEND_KERNEL; `default`
= the launcher's choice), and, alone, each of its requests, so a slow chunk can be traced to its short or its
long pieces. TFLOP/s counts the causal work actually needed: 4 d heads (new x prefix + new (new + 1) / 2).
KV slots are contiguous per request, as a fresh pool hands them out (--scatter: a random permutation); --layout hnd
stores the pool head-major (a strided view of [kv_heads, slots, d]).
The table (per chunk, then totals per kernel) is printed last and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable

import numpy as np
import torch
from bench_decode_splits import kv_pool  # scripts/ is on sys.path when a script runs
from bench_kernels import bench as time_ms  # median of CUDA-event-timed calls

from lite_srt import _C

DEV, DT = "cuda", torch.bfloat16
HQ, HKV, D = 32, 8, 128


def chunk_workload(max_input: int, chunk: int, n_chunks: int, seed: int) -> list[list[tuple[int, int]]]:
    """Chunks as lists of (prefix, new) pieces: the scheduler's cut of seeded random prompt lengths."""
    rng = np.random.default_rng(seed)
    lengths = iter(rng.integers(1, max_input + 1, size=100_000).tolist())
    chunks: list[list[tuple[int, int]]] = []
    carry = (0, 0)  # (tokens already prefilled, tokens left) of the prompt the last chunk split
    while len(chunks) < n_chunks:
        pieces, budget = [], chunk
        if carry[1]:
            take = min(carry[1], budget)
            pieces.append((carry[0], take))
            budget -= take
            carry = (carry[0] + take, carry[1] - take) if take < carry[1] else (0, 0)
        while budget > 0 and not carry[1]:
            n = next(lengths)
            take = min(n, budget)
            pieces.append((0, take))
            budget -= take
            if take < n:
                carry = (take, n - take)
        chunks.append(pieces)
    return chunks


def pairs(pieces: list[tuple[int, int]]) -> float:
    return float(sum(e * p + e * (e + 1) / 2 for p, e in pieces))


def make_call(pieces: list[tuple[int, int]], scatter: bool, layout: str = "nhd") -> Callable[[], object]:
    lens = [p + e for p, e in pieces]
    slots = sum(lens)
    kc, vc = kv_pool(slots, HKV, D, layout), kv_pool(slots, HKV, D, layout)
    order = torch.randperm(slots, dtype=torch.int32) if scatter else torch.arange(slots, dtype=torch.int32)
    table = torch.zeros(len(pieces), max(lens), dtype=torch.int32)
    at = 0
    for i, n in enumerate(lens):
        table[i, :n] = order[at : at + n]
        at += n
    ext = [e for _, e in pieces]
    starts = np.concatenate([[0], np.cumsum(ext)[:-1]]).tolist()
    q = torch.randn(sum(ext), HQ, D, device=DEV, dtype=DT)
    out = torch.empty_like(q)
    i32 = dict(device=DEV, dtype=torch.int32)
    args = (
        out,
        q,
        kc,
        vc,
        table.to(DEV),
        torch.arange(len(pieces), **i32),
        torch.tensor(lens, **i32),
        torch.tensor(ext, **i32),
        torch.tensor(starts, **i32),
        1 / math.sqrt(D),
    )
    return lambda: _C.extend_attention_cuda(*args)


def with_kernel(kernel: str, fn: Callable[[], object]) -> float:
    if kernel != "default":
        os.environ["LITE_SRT_EXTEND_KERNEL"] = kernel
    try:
        return time_ms(fn)
    finally:
        os.environ.pop("LITE_SRT_EXTEND_KERNEL", None)


def tflops(p: float, ms: float) -> float:
    return 4 * HQ * D * p / ms / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-input", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scatter", action="store_true")
    ap.add_argument("--layout", choices=["nhd", "hnd"], default="nhd")
    ap.add_argument("--kernels", nargs="+", default=["default"])
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for i, pieces in enumerate(chunk_workload(a.max_input, a.chunk, a.chunks, a.seed)):
        fn = make_call(pieces, a.scatter, a.layout)
        p = pairs(pieces)
        row = {"chunk": i, "pieces": pieces, "pairs": p, "ms": {k: with_kernel(k, fn) for k in a.kernels}}
        # Each request alone on the default kernel: where a chunk's time goes.
        row["alone_ms"] = [time_ms(make_call([piece], a.scatter, a.layout)) for piece in pieces]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'chunk':>5} {'pieces (prefix+new)':<44} " + " ".join(f"{k + ' TF/s':>16}" for k in a.kernels)
          + f" {'alone: each piece TF/s':<40}")  # fmt: skip
    for r in rows:
        desc = " ".join(f"{p}+{e}" for p, e in r["pieces"])[:44]
        alone = " ".join(
            f"{tflops(pairs([pc]), ms):.0f}" for pc, ms in zip(r["pieces"], r["alone_ms"], strict=True)
        )
        print(f"{r['chunk']:>5} {desc:<44} " + " ".join(f"{tflops(r['pairs'], r['ms'][k]):>16.1f}" for k in a.kernels)
              + f" {alone:<40}")  # fmt: skip
    total_pairs = sum(r["pairs"] for r in rows)
    totals = {k: sum(r["ms"][k] for r in rows) for k in a.kernels}
    summary = {k: {"ms": ms, "tflops": tflops(total_pairs, ms)} for k, ms in totals.items()}
    print(
        "all chunks: "
        + ", ".join(f"{k} {v['ms']:.2f} ms = {v['tflops']:.1f} TFLOP/s" for k, v in summary.items())
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "totals": summary, "args": vars(a)}, f, indent=1)


if __name__ == "__main__":
    main()
