"""Decode attention over requests of mixed context lengths: the one-wave split plan against balanced key splits.

  python scripts/bench_decode_balance.py [--batch-sizes 8 16 32 48 64 96 128 160] [--lengths 1000 9000]
      [--max-context 9300]

Each batch draws its requests' key counts uniformly from --lengths (seeded) on scattered KV slots (Llama-3.1-8B
heads: 32 query / 8 KV, d=128, bf16) and times three launches of `_C.decode_attention_cuda`: without key counts
(the one-wave plan), with the step's total and longest key counts (balanced, as eager steps run it), and
graph-style (grid sized for --max-context, keys per split read from a device tensor, as a captured balanced
graph runs it). Environment knobs of the plan (LITE_SRT_DECODE_MIN_KEYS, _BALANCE_DIV, _BALANCE_WAVES) apply.
The three outputs must agree. The table (us per call, % of device-copy bandwidth, the plan's one-wave and grid
splits) is printed last and written as JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from bench_decode_splits import copy_gbps, time_ms  # scripts/ is on sys.path when a script runs

from lite_srt import _C

DEV, DT = "cuda", torch.bfloat16
HQ, HKV, D = 32, 8, 128


def time_batch(lens: list[int], max_context: int) -> dict:
    bs, total, longest = len(lens), sum(lens), max(lens)
    kc = torch.randn(total + 1, HKV, D, device=DEV, dtype=DT)
    vc = torch.randn_like(kc)
    perm = torch.randperm(total, device=DEV, dtype=torch.int32)
    table = torch.zeros(bs, longest, dtype=torch.int32, device=DEV)
    at = 0
    for i, n in enumerate(lens):
        table[i, :n] = perm[at : at + n]
        at += n
    rows = torch.arange(bs, device=DEV, dtype=torch.int32)
    seq = torch.tensor(lens, device=DEV, dtype=torch.int32)
    q = torch.randn(bs, HQ, D, device=DEV, dtype=DT)
    counters = torch.zeros(bs * HQ, dtype=torch.int32, device=DEV)
    base, chunk, splits = _C.decode_split_plan_cuda(HQ, HKV, bs, total, longest)
    chunk_t = torch.tensor([chunk], device=DEV)
    # A captured graph's grid is planned without the step's total (cuda_graph.GraphInputs.batch), as here.
    balance = {"one-wave": (), "balanced": (total, longest), "graph-style": (0, max_context, chunk_t)}
    outs, ms = {}, {}
    for name, extra in balance.items():
        out = torch.empty_like(q)
        outs[name] = out

        def call(out=out, extra=extra) -> None:
            _C.decode_attention_cuda(out, q, kc, vc, table, rows, seq, D**-0.5, counters, *extra)

        ms[name] = time_ms(call)
    ref = outs["one-wave"].float()
    for name, out in outs.items():
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        if err > 1e-2:
            raise SystemExit(
                f"batch {bs}: {name} disagrees with the one-wave plan (max relative difference {err:.3g})"
            )
    return {
        "batch_size": bs,
        "total_keys": total,
        "max_keys": longest,
        "base": base,
        "splits": splits,
        "ms": ms,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 48, 64, 96, 128, 160])
    p.add_argument("--lengths", type=int, nargs=2, default=[1000, 9000], metavar=("LO", "HI"))
    p.add_argument("--max-context", type=int, default=9300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="bench_decode_balance.json")
    a = p.parse_args()
    copy = copy_gbps()
    rng = np.random.default_rng(a.seed)
    results = []
    for bs in a.batch_sizes:
        lens = rng.integers(a.lengths[0], a.lengths[1] + 1, size=bs).tolist()
        results.append(time_batch(lens, a.max_context))
    with open(a.json, "w") as f:
        json.dump(
            {"device": torch.cuda.get_device_name(), "copy_gbps": copy, "args": vars(a), "results": results},
            f,
        )
    lo, hi = a.lengths
    print(
        f"\n{torch.cuda.get_device_name()}: copy {copy:.0f} GB/s, keys {lo}-{hi}; us per call (% of copy bw)"
    )
    print("| bs | one-wave | balanced | graph-style | splits (one-wave / grid) |")
    print("|---|---|---|---|---|")
    for r in results:
        gb = r["total_keys"] * HKV * D * 2 * 2 / 1e9
        cells = [f"{m * 1e3:.0f} ({100 * gb / m * 1e3 / copy:.0f}%)" for m in r["ms"].values()]
        print(f"| {r['batch_size']} | " + " | ".join(cells) + f" | {r['base']} / {r['splits']} |")


if __name__ == "__main__":
    main()
