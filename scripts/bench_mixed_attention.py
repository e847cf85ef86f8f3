"""Attention of one mixed prefill+decode step: everything through the extend kernel vs split (decode rows on the
decode kernel, lite_srt/layers/attention.py), one layer of Llama-3.1-8B heads (32 q / 8 KV, d=128, bf16).

  python scripts/bench_mixed_attention.py [--cases 7992x0+200@4500 ...]

A case "CxP+N@L" is one prefill chunk of C new tokens after a cached prefix of P, plus N decode rows whose
contexts are L tokens. KV slots are scattered over the pool. Checks that both ways agree, then prints ms per
call (attention layer: KV store + attention) and the split's speed-up; the table is printed last and written
as JSON.
"""

from __future__ import annotations

import argparse
import json
import re

import torch
from bench_decode_splits import time_ms  # scripts/ is on sys.path when a script runs

from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.layers import attention as attention_mod
from lite_srt.layers.attention import PagedAttention
from lite_srt.mem.kv_pool import KVPool

DEV, DT = "cuda", torch.bfloat16
HQ, HKV, D = 32, 8, 128
DEFAULT_CASES = ["7992x0+200@4500", "7992x4096+200@4500", "8142x0+50@4000", "600x0+60@1200", "2000x0+100@800"]


def build(chunk: int, prefix: int, decodes: int, ctx: int) -> tuple[ForwardBatch, int]:
    lens = [(prefix + chunk, chunk)] + [(ctx, 1)] * decodes
    total = sum(n for n, _ in lens)
    perm = torch.randperm(total, dtype=torch.int32)
    table = torch.zeros(len(lens), max(n for n, _ in lens), dtype=torch.int32)
    loc, at = [], 0
    for row, (n, new) in enumerate(lens):
        table[row, :n] = perm[at : at + n]
        loc.append(perm[at + n - new : at + n])
        at += n
    positions = [i for n, new in lens for i in range(n - new, n)]
    fb = ForwardBatch.build(
        ForwardMode.EXTEND,
        [0] * len(positions),
        positions,
        torch.cat(loc).long(),
        list(range(len(lens))),
        [n for n, _ in lens],
        [new for _, new in lens],
        table.to(DEV),
        torch.device(DEV),
    )
    fb.set_gather(list(range(chunk, chunk + decodes)), list(range(1, 1 + decodes)), DEV)
    return fb, total


def run_case(case: str) -> dict:
    m = re.fullmatch(r"(\d+)x(\d+)\+(\d+)@(\d+)", case)
    if m is None:
        raise SystemExit(f"bad case {case!r}: expected CxP+N@L, e.g. 7992x0+200@4500")
    chunk, prefix, decodes, ctx = map(int, m.groups())
    fb, slots = build(chunk, prefix, decodes, ctx)
    pool = KVPool(1, slots, HKV, D, DT, DEV)
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    t = fb.num_tokens
    q, k, v = (torch.randn(t, h, D, dtype=DT, device=DEV) for h in (HQ, HKV, HKV))
    layer = PagedAttention(0, HQ, HKV, D)
    result = {"case": case}
    outs = {}
    for name, split in (("extend-all", False), ("split", True)):
        attention_mod._SPLIT_MIXED = split
        outs[name] = layer(q, k, v, fb, pool).float()
        result[name] = time_ms(lambda: layer(q, k, v, fb, pool))
    attention_mod._SPLIT_MIXED = True
    err = (outs["split"] - outs["extend-all"]).abs().max() / outs["extend-all"].abs().max()
    result["max_rel_diff"] = float(err)
    if err > 2e-2:
        raise SystemExit(f"{case}: split and extend-all disagree (max relative difference {float(err):.3g})")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    p.add_argument("--json", default="bench_mixed_attention.json")
    a = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for c in a.cases:
        rows.append(run_case(c))
        torch.cuda.empty_cache()  # the last case's pool
    with open(a.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "results": rows}, f, indent=2)
    print(f"\n{torch.cuda.get_device_name()}: one layer, ms per call (chunk x prefix + decodes @ context)")
    print("| case | extend-all | split | speed-up | max rel diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['extend-all']:.3f} | {r['split']:.3f} | {r['extend-all'] / r['split']:.2f}x "
            f"| {r['max_rel_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
