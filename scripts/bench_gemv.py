"""Small-batch GEMV benchmark: lite_srt's native GEMV against torch (cuBLAS) on Llama-3.1-8B decode shapes, bf16.

For M in {1, 2, 4, 8} rows and each linear layer of Llama-3.1-8B (qkv, o, gate_up, down, down fused with
silu_and_mul, lm_head) it checks the native result against a float32 torch product, then times both paths and
reports achieved GB/s next to the measured device copy bandwidth. Timing: each path is captured in a CUDA graph
of back-to-back calls (as decode runs with CUDA graphs), cycling through copies of the weight that together
exceed --rotate-mb so L2 (50 MB on an H100) cannot serve the weights; median of --reps replays.

Last it estimates one decode step's linear layers (32 x (qkv + o + gate_up + down) + lm_head) for each path.

Usage: python scripts/bench_gemv.py [--json bench_gemv.json] [--rows 1,2,4,8] [--variants 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lite_srt import _C, kernels

DEV = "cuda"
DT = torch.bfloat16
LAYERS = 32
# (name, N, K, fused): Llama-3.1-8B linear layers, weight [N, K]; "down+silu" reads x = [gate | up] of width 2K.
SHAPES = [
    ("qkv", 6144, 4096, False),
    ("o", 4096, 4096, False),
    ("gate_up", 28672, 4096, False),
    ("down", 4096, 14336, False),
    ("down+silu", 4096, 14336, True),
    ("lm_head", 128256, 4096, False),
]
LAYER_SHAPES = ("qkv", "o", "gate_up", "down+silu")  # one decoder layer, MLP down projection fused


@dataclass
class Row:
    shape: str
    n: int
    k: int
    m: int
    variant: str
    us_native: float
    us_torch: float
    gbps_native: float
    gbps_torch: float
    pct_copy_native: float
    pct_copy_torch: float
    max_rel_err: float


def graph_time_us(calls: list[Callable[[], object]], reps: int) -> float:
    """Median microseconds per call of `calls` run back to back inside one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph (cuBLAS picks its kernels, workspaces exist)
        for fn in calls[:3]:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth_gbps(reps: int) -> float:
    """Device-to-device copy of 2 GiB, counting bytes read plus bytes written. Timed eagerly: a copy captured
    in a graph becomes a memcpy node, which measured slower (2.4 TB/s on H100) than the eager copy."""
    src = torch.empty(1024**3, dtype=DT, device=DEV)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 1024**3 * 2 / times[len(times) // 2] / 1e3


def bench_shape(
    name: str, n: int, k: int, fused: bool, m: int, variant: str, copy_gbps: float, args: argparse.Namespace
) -> Row:
    weight_bytes = n * k * 2
    copies = max(2, math.ceil(args.rotate_mb * 1e6 / weight_bytes))
    weights = [torch.randn(n, k, device=DEV, dtype=DT) / math.sqrt(k) for _ in range(copies)]
    in_width = 2 * k if fused else k
    x = torch.randn(m, in_width, device=DEV, dtype=DT)
    out = torch.empty(m, n, device=DEV, dtype=DT)
    if variant != "auto":  # read by the launcher at each launch, so set before the graph captures
        os.environ["LITE_SRT_GEMV_VARIANT"] = variant
    else:
        os.environ.pop("LITE_SRT_GEMV_VARIANT", None)

    _C.gemv_cuda(out, x, weights[0], None, fused)
    x_in = (
        kernels.silu_and_mul(x) if fused else x
    )  # the two-step torch path's input, rounded like the kernel's
    expected = F.linear(x_in.float(), weights[0].float())
    err = ((out.float() - expected).abs().max() / expected.abs().max()).item()

    n_calls = max(copies, args.calls)
    native = [(lambda w=weights[i % copies]: _C.gemv_cuda(out, x, w, None, fused)) for i in range(n_calls)]
    if fused:
        torch_calls = [
            (lambda w=weights[i % copies]: F.linear(kernels.silu_and_mul(x), w)) for i in range(n_calls)
        ]
    else:
        torch_calls = [(lambda w=weights[i % copies]: F.linear(x, w)) for i in range(n_calls)]
    us_native = graph_time_us(native, args.reps)
    us_torch = graph_time_us(torch_calls, args.reps)
    os.environ.pop("LITE_SRT_GEMV_VARIANT", None)

    moved = weight_bytes + (m * in_width + m * n) * 2
    gb_native, gb_torch = moved / us_native / 1e3, moved / us_torch / 1e3
    del weights
    torch.cuda.empty_cache()
    return Row(
        name,
        n,
        k,
        m,
        variant,
        round(us_native, 2),
        round(us_torch, 2),
        round(gb_native, 1),
        round(gb_torch, 1),
        round(100 * gb_native / copy_gbps, 1),
        round(100 * gb_torch / copy_gbps, 1),
        err,
    )


def decode_estimate(rows: list[Row], copy_gbps: float) -> list[dict]:
    """Per M: 32 decoder layers of (qkv, o, gate_up, down+silu) plus lm_head, native vs torch, in ms."""
    out = []
    for m in sorted({r.m for r in rows}):
        by = {r.shape: r for r in rows if r.m == m and r.variant == "auto"}
        if not all(s in by for s in (*LAYER_SHAPES, "lm_head")):
            continue
        layer = [by[s] for s in LAYER_SHAPES]
        native_ms = (LAYERS * sum(r.us_native for r in layer) + by["lm_head"].us_native) / 1e3
        # What kernels.silu_mul_linear runs by default: silu_and_mul (its time read off the torch rows) + plain GEMV.
        silu_us = by["down+silu"].us_torch - by["down"].us_torch if "down" in by else 0.0
        two_step_us = by["down"].us_native + silu_us if "down" in by else by["down+silu"].us_native
        two_step_ms = native_ms + LAYERS * (two_step_us - by["down+silu"].us_native) / 1e3
        torch_ms = (LAYERS * sum(r.us_torch for r in layer) + by["lm_head"].us_torch) / 1e3
        weight_gb = (LAYERS * sum(r.n * r.k for r in layer) + by["lm_head"].n * by["lm_head"].k) * 2 / 1e9
        out.append(
            {
                "m": m,
                "weights_gb": round(weight_gb, 2),
                "floor_ms": round(weight_gb / copy_gbps * 1e3, 3),
                "native_ms": round(native_ms, 3),
                "native_two_step_down_ms": round(two_step_ms, 3),
                "torch_ms": round(torch_ms, 3),
                "native_pct_copy": round(100 * weight_gb / copy_gbps * 1e3 / native_ms, 1),
                "torch_pct_copy": round(100 * weight_gb / copy_gbps * 1e3 / torch_ms, 1),
            }
        )
    return out


def print_table(rows: list[Row], estimate: list[dict], copy_gbps: float, device: str) -> None:
    print(
        f"\n{device}; copy bandwidth {copy_gbps:.0f} GB/s (read + write); bf16; CUDA-graph timed, L2 defeated"
    )
    head = (
        f"{'shape':<10} {'N':>6} {'K':>6} {'M':>2} {'var':>4} {'us native':>10} {'us torch':>9} "
        f"{'GB/s nat':>9} {'GB/s tor':>9} {'%copy nat':>9} {'%copy tor':>9} {'speedup':>7} {'rel err':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.shape:<10} {r.n:>6} {r.k:>6} {r.m:>2} {r.variant:>4} {r.us_native:>10.2f} {r.us_torch:>9.2f} "
            f"{r.gbps_native:>9.0f} {r.gbps_torch:>9.0f} {r.pct_copy_native:>9.1f} {r.pct_copy_torch:>9.1f} "
            f"{r.us_torch / r.us_native:>7.2f} {r.max_rel_err:>8.1e}"
        )
    print("\ndecode step, linear layers only (32 x (qkv + o + gate_up + down+silu) + lm_head):")
    for e in estimate:
        print(
            f"  M={e['m']}: {e['weights_gb']} GB, floor {e['floor_ms']:.3f} ms; native {e['native_ms']:.3f} ms "
            f"({e['native_pct_copy']}% of copy; {e['native_two_step_down_ms']:.3f} ms with silu_and_mul + plain "
            f"down), torch {e['torch_ms']:.3f} ms ({e['torch_pct_copy']}% of copy)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", default="", help="write rows and the decode estimate here")
    parser.add_argument("--rows", default="1,2,4,8", help="comma-separated M values")
    parser.add_argument("--shapes", default="", help="comma-separated subset of shape names")
    parser.add_argument("--variants", default="", help="also time forced rows-per-warp shapes, e.g. 1,2,4")
    parser.add_argument(
        "--rotate-mb", type=float, default=256.0, help="weight copies per shape total >= this"
    )
    parser.add_argument(
        "--calls", type=int, default=24, help="calls per captured graph (at least the copies)"
    )
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--tol", type=float, default=1e-2, help="max error relative to max |reference|")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    copy_gbps = copy_bandwidth_gbps(args.reps)
    print(json.dumps({"copy_gbps": round(copy_gbps, 1), "device": device}), flush=True)
    wanted = set(args.shapes.split(",")) if args.shapes else None
    variants = ["auto", *[v for v in args.variants.split(",") if v]]
    rows: list[Row] = []
    for m in [int(v) for v in args.rows.split(",")]:
        for name, n, k, fused in SHAPES:
            if wanted is not None and name not in wanted:
                continue
            for variant in variants:
                row = bench_shape(name, n, k, fused, m, variant, copy_gbps, args)
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
    estimate = decode_estimate(rows, copy_gbps)
    bad = [r for r in rows if not r.max_rel_err <= args.tol]
    print_table(rows, estimate, copy_gbps, device)
    if args.json:
        with open(args.json, "w") as f:
            payload = {"device": device, "copy_gbps": copy_gbps, "rows": [asdict(r) for r in rows]}
            json.dump({**payload, "decode_estimate": estimate}, f, indent=1)
    if bad:
        raise SystemExit(f"FAILED correctness: {[(r.shape, r.m, r.variant, r.max_rel_err) for r in bad]}")


if __name__ == "__main__":
    main()
