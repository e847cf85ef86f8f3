"""Decode attention at small and mid batch against the number of key splits per request.

  python scripts/bench_decode_splits.py [--batch-sizes 8 16 32] [--contexts 1024 2048] [--splits auto 1 2 4]
      [--merge kernel|fused] [--layout nhd|hnd] [--slots scattered|contiguous]

Each cell forces the split count through LITE_SRT_DECODE_SPLITS (read on every launch) and times the op on
KV slots scattered over the pool, or consecutive per request as a fresh pool hands them out (Llama-3.1-8B
heads: 32 query / 8 KV, d=128, bf16); "auto" is the built-in plan. `--layout hnd` stores the pool head-major
([kv_heads, slots, d], passed as a strided [slots, kv_heads, d] view), so one head's keys are contiguous. Splits are
merged by the separate merge kernel (`--merge kernel`) or inside the decode kernel (`--merge fused`, what the
model path does: lite_srt.kernels passes merge counters). The table
(printed last, also written as JSON) gives microseconds and the share of device-copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch

from lite_srt import _C

DEV, DT = "cuda", torch.bfloat16


def time_ms(fn, iters: int = 50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def copy_gbps() -> float:
    src = torch.empty(1 << 30, dtype=DT, device=DEV)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 2 / ms / 1e6


def kv_pool(slots: int, hkv: int, d: int, layout: str) -> torch.Tensor:
    """A [slots, hkv, d] pool of random values, slot-major (nhd) or a view of a head-major buffer (hnd)."""
    if layout == "hnd":
        return torch.randn(hkv, slots, d, device=DEV, dtype=DT).transpose(0, 1)
    return torch.randn(slots, hkv, d, device=DEV, dtype=DT)


def time_splits(
    bs: int,
    ctx: int,
    splits: list[str],
    fused: bool,
    layout: str = "nhd",
    scattered: bool = True,
    hq: int = 32,
    hkv: int = 8,
    d: int = 128,
) -> dict[str, float]:
    slots = bs * ctx
    kc = kv_pool(slots + 1, hkv, d, layout)
    vc = kv_pool(slots + 1, hkv, d, layout)
    order = (
        torch.randperm(slots, device=DEV, dtype=torch.int32) if scattered else torch.arange(slots, device=DEV)
    )
    table = order.to(torch.int32).view(bs, ctx)
    rows = torch.arange(bs, device=DEV, dtype=torch.int32)
    lens = torch.full((bs,), ctx, device=DEV, dtype=torch.int32)
    q = torch.randn(bs, hq, d, device=DEV, dtype=DT)
    out = torch.empty_like(q)
    counters = torch.zeros(bs * hq, dtype=torch.int32, device=DEV) if fused else None
    result = {}
    for s in splits:
        if s == "auto":
            os.environ.pop("LITE_SRT_DECODE_SPLITS", None)
        else:
            os.environ["LITE_SRT_DECODE_SPLITS"] = s
        result[s] = time_ms(
            lambda: _C.decode_attention_cuda(out, q, kc, vc, table, rows, lens, 1 / math.sqrt(d), counters)
        )
    os.environ.pop("LITE_SRT_DECODE_SPLITS", None)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 24, 32, 48, 64])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--splits", nargs="+", default=["auto", "1", "2", "3", "4", "8"])
    p.add_argument("--merge", choices=["kernel", "fused"], default="fused")
    p.add_argument("--layout", choices=["nhd", "hnd"], default="nhd")
    p.add_argument("--slots", choices=["scattered", "contiguous"], default="scattered")
    p.add_argument("--json", default="bench_decode_splits.json")
    a = p.parse_args()
    copy = copy_gbps()
    results = []
    for bs in a.batch_sizes:
        for ctx in a.contexts:
            ms = time_splits(bs, ctx, a.splits, a.merge == "fused", a.layout, a.slots == "scattered")
            results.append({"batch_size": bs, "context": ctx, "ms": ms})
    with open(a.json, "w") as f:
        json.dump(
            {
                "device": torch.cuda.get_device_name(),
                "copy_gbps": copy,
                "merge": a.merge,
                "layout": a.layout,
                "slots": a.slots,
                "results": results,
            },
            f,
            indent=2,
        )
    print(
        f"\n{torch.cuda.get_device_name()}: copy {copy:.0f} GB/s, {a.merge} merge, {a.layout} pool, {a.slots} slots;"
        " us per call (% of copy bw)"
    )
    print("| bs | ctx | " + " | ".join(f"splits {s}" for s in a.splits) + " |")
    print("|---|---|" + "---|" * len(a.splits))
    for r in results:
        gb = 2 * r["batch_size"] * r["context"] * 8 * 128 * 2 / 1e9
        cells = [f"{r['ms'][s] * 1e3:.0f} ({100 * gb / r['ms'][s] * 1e3 / copy:.0f}%)" for s in a.splits]
        print(f"| {r['batch_size']} | {r['context']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
