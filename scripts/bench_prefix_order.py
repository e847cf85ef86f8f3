"""Decode attention when groups of requests share a cached prefix: batch order grouped vs shuffled.

The scheduler keeps running requests in KV-slot order, so requests sharing a prefix are adjacent in a decode
batch. This measures what that is worth in the decode attention kernel alone: a batch of --groups x
--per-group requests, each group sharing a --prefix-len-token prefix (the same KV slots) followed by
--suffix-len private tokens, Llama-3.1-8B shapes (32 q heads, 8 KV heads, head dim 128, bf16), one layer.
"grouped" runs the batch with each group's requests side by side; "shuffled" in a random order (the order
requests arrive in). Also "private": the same lengths with no sharing (every request has its own prefix copy),
the traffic a kernel without any reuse has to read. Reports ms per call and effective GB/s (the KV bytes each
request attends over, summed over requests, per second: above the device bandwidth means cache reuse).
"cascade" is the grouped batch with its cascade groups (lite_srt/engine/prefix_groups.py): each group's prefix
is read once for all its requests by the shared kernel, then each request's own keys.

  python scripts/bench_prefix_order.py [--groups 16 --per-group 16 --prefix-len 2048 --suffix-len 256] [--shared-splits 1 2 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from lite_srt import kernels
from lite_srt.engine.prefix_groups import PrefixGroups

DEV = "cuda"
DT = torch.bfloat16
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


def time_ms(fn, iters: int = 30) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        fn()
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def print_kernels(name: str, fn, iters: int = 20) -> None:
    """Mean GPU time per call of each kernel fn launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            print(f"  {name:>9} {e.key[:70]:<70} {e.device_time_total / iters:8.1f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--per-group", type=int, default=16)
    p.add_argument("--prefix-len", type=int, default=2048)
    p.add_argument("--suffix-len", type=int, default=256)
    p.add_argument("--json")
    p.add_argument(
        "--profile", action="store_true", help="print the kernels of each variant (torch.profiler)"
    )
    p.add_argument(
        "--shared-splits",
        type=int,
        nargs="*",
        default=[],
        help="also run the cascade with these fixed shared-key splits (0: the kernel picks, as graphs do per step)",
    )
    a = p.parse_args()
    b = a.groups * a.per_group
    ctx = a.prefix_len + a.suffix_len
    shared_slots = a.groups * a.prefix_len + b * a.suffix_len
    private_slots = b * ctx
    k = torch.randn(private_slots + 1, KV_HEADS, HEAD_DIM, device=DEV, dtype=DT)
    v = torch.randn_like(k)
    q = torch.randn(b, Q_HEADS, HEAD_DIM, device=DEV, dtype=DT)
    seq_lens = torch.full((b,), ctx, dtype=torch.int64, device=DEV)
    rows = torch.arange(b, dtype=torch.int64, device=DEV)
    scale = HEAD_DIM**-0.5

    shared = torch.empty(b, ctx, dtype=torch.int32)
    for g in range(a.groups):
        for j in range(a.per_group):
            r = g * a.per_group + j
            shared[r, : a.prefix_len] = torch.arange(g * a.prefix_len, (g + 1) * a.prefix_len)
            start = a.groups * a.prefix_len + r * a.suffix_len
            shared[r, a.prefix_len :] = torch.arange(start, start + a.suffix_len)
    assert int(shared.max()) < shared_slots
    shuffled = shared[torch.randperm(b, generator=torch.Generator().manual_seed(0))]
    private = torch.arange(private_slots, dtype=torch.int32).view(b, ctx)
    tables = {"grouped": shared, "shuffled": shuffled, "private": private}

    kv_bytes = b * ctx * KV_HEADS * HEAD_DIM * 2 * k.element_size()  # what the requests attend over, K and V
    starts = list(range(0, b, a.per_group))
    cascade = PrefixGroups([a.prefix_len] * b, starts, [a.per_group] * len(starts)).to_device(
        torch.device(DEV)
    )
    runs = [(name, table, None) for name, table in tables.items()] + [("cascade", shared, cascade)]
    runs += [
        (f"cascade s{n}", shared, dataclasses.replace(cascade, shared_splits=n)) for n in a.shared_splits
    ]
    results = []
    for name, table, groups in runs:
        t = table.to(DEV)
        ms = time_ms(lambda t=t, c=groups: kernels.decode_attention(q, k, v, t, rows, seq_lens, scale, c))
        results.append({"order": name, "ms": ms, "effective_GBps": kv_bytes / ms / 1e6})
        if a.profile:
            print_kernels(
                name, lambda t=t, c=groups: kernels.decode_attention(q, k, v, t, rows, seq_lens, scale, c)
            )
        print(json.dumps(results[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "args": vars(a), "results": results}, f, indent=1
            )
    print(
        f"\n{torch.cuda.get_device_name()}: {b} requests ({a.groups} groups x {a.per_group}), prefix {a.prefix_len}"
        f" + private {a.suffix_len} tokens, one layer"
    )
    print(f"{'order':>12}{'ms':>9}{'effective GB/s':>16}")
    for r in results:
        print(f"{r['order']:>12}{r['ms']:>9.3f}{r['effective_GBps']:>16.0f}")


if __name__ == "__main__":
    main()
