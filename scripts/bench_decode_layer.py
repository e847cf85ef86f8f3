"""The attention block of every layer of one decode step, replayed as one CUDA graph: RoPE, KV store and paged
decode attention with its split merge, Llama-3.1-8B heads (32 query / 8 KV, d=128, bf16), one KV pool per layer.

  python scripts/bench_decode_layer.py [--batch-sizes 1 4 16 48] [--context 1024] [--layers 32] [--with-gemms]

Variants (what the model path runs is "fused"):
  two-step     rotary_embedding, store_kv, decode attention + the separate merge kernel
  rope+store   rope_store_kv (one kernel), decode attention + merge kernel
  merge-in     rotary_embedding, store_kv, decode attention merging its splits in the kernel
  fused        rope_store_kv, decode attention merging in the kernel
With --with-gemms each layer also runs its qkv and o projections (torch matmuls, as in the model at batch > 1),
so the kernels run between the GEMMs they sit between in a real step. Prints microseconds per step (all
layers) and per layer, as a table last; writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import math

import torch

from lite_srt import _C
from lite_srt.layers.rotary import build_cos_sin_cache

DEV, DT = "cuda", torch.bfloat16
HQ, HKV, D = 32, 8, 128
VARIANTS = ("two-step", "rope+store", "merge-in", "fused")


def make_step(bs: int, ctx: int, layers: int, gemms: bool):
    """Inputs of one decode step: every request has ctx cached keys and writes its new token to a fresh slot."""
    slots = bs * (ctx + 1) + 1
    pools = [
        (torch.randn(slots, HKV, D, device=DEV, dtype=DT), torch.randn(slots, HKV, D, device=DEV, dtype=DT))
        for _ in range(layers)
    ]
    table = torch.randperm(slots - 1, device=DEV, dtype=torch.int32)[: bs * (ctx + 1)].view(bs, ctx + 1)
    rows = torch.arange(bs, device=DEV, dtype=torch.int32)
    lens = torch.full((bs,), ctx + 1, device=DEV, dtype=torch.int32)
    loc = table[:, ctx].long().contiguous()
    positions = torch.full((bs,), ctx, device=DEV, dtype=torch.int64)
    qkv = torch.randn(bs, (HQ + 2 * HKV) * D, device=DEV, dtype=DT)
    hidden = torch.randn(bs, HQ * D, device=DEV, dtype=DT)
    weights = [
        (
            torch.randn((HQ + 2 * HKV) * D, HQ * D, device=DEV, dtype=DT) * 0.01,
            torch.randn(HQ * D, HQ * D, device=DEV, dtype=DT) * 0.01,
        )
        for _ in range(layers if gemms else 0)
    ]
    return pools, table, rows, lens, loc, positions, qkv, hidden, weights


def run_variant(name: str, step, cos_sin: torch.Tensor, counters: torch.Tensor) -> None:
    pools, table, rows, lens, loc, positions, qkv, hidden, weights = step
    bs = qkv.shape[0]
    out = torch.empty(bs, HQ, D, device=DEV, dtype=DT)
    fused_rope = name in ("rope+store", "fused")
    ctr = counters if name in ("merge-in", "fused") else None
    for i, (kc, vc) in enumerate(pools):
        if weights:
            torch.matmul(hidden, weights[i][0].t(), out=qkv)
        q, k, v = (x.view(bs, -1, D) for x in qkv.split([HQ * D, HKV * D, HKV * D], dim=-1))
        if fused_rope:
            _C.rope_store_kv_cuda(positions, q, k, v, cos_sin, True, kc, vc, loc)
        else:
            _C.rotary_embedding_cuda(positions, q, k, cos_sin, True)
            _C.store_kv_cuda(kc, vc, loc, k, v)
        _C.decode_attention_cuda(out, q, kc, vc, table, rows, lens, 1 / math.sqrt(D), ctr)
        if weights:
            torch.matmul(out.view(bs, HQ * D), weights[i][1].t(), out=hidden)


def time_graph(fn, iters: int = 100) -> float:
    fn()  # warm-up outside the capture (workspace sizes, smem opt-ins)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(10):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters * 1e3  # us


def bench_batch(
    bs: int, ctx: int, layers: int, rounds: int, cos_sin: torch.Tensor, gemms: bool
) -> dict[str, float]:
    """Best replay time (us) of each variant over `rounds` alternating rounds."""
    step = make_step(bs, ctx, layers, gemms)
    counters = torch.zeros(bs * HQ, dtype=torch.int32, device=DEV)
    best = {name: float("inf") for name in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            us = time_graph(functools.partial(run_variant, name, step, cos_sin, counters))
            best[name] = min(best[name], us)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 48])
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="variants alternate; the best round is kept")
    p.add_argument("--with-gemms", action="store_true", help="each layer's qkv and o projections too")
    p.add_argument("--json", default="bench_decode_layer.json")
    a = p.parse_args()
    cos_sin = build_cos_sin_cache(D, a.context + 8, 500000.0, None).to(DEV)
    results = []
    for bs in a.batch_sizes:
        best = bench_batch(bs, a.context, a.layers, a.rounds, cos_sin, a.with_gemms)
        results.append({"batch_size": bs, "context": a.context, "gemms": a.with_gemms, "us": best})
        torch.cuda.empty_cache()
    with open(a.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "results": results}, f, indent=2)
    gemms = ", qkv and o GEMMs included" if a.with_gemms else ""
    print(f"\n{torch.cuda.get_device_name()}: us per step ({a.layers} layers{gemms}), per layer in brackets")
    print("| bs | ctx | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for r in results:
        cells = [f"{r['us'][n]:.0f} ({r['us'][n] / a.layers:.2f})" for n in VARIANTS]
        print(f"| {r['batch_size']} | {r['context']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
