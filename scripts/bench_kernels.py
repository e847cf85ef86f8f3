"""Kernel benchmark for lite_srt._C on the GPU: achieved bandwidth / throughput in physical units.

Decode attention: GB/s of K/V read over the measured device copy bandwidth. Extend attention: TFLOP/s beside
torch SDPA (flash and cuDNN backends) on the same work in contiguous form. Norm, rope, act, store: GB/s.
Prints JSON lines as it goes, a table last, and writes all rows to --json.

Usage: python scripts/bench_kernels.py [--json bench_kernels.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F

from lite_srt import _C

DEV = "cuda"
DT = torch.bfloat16


@dataclass
class Row:
    kernel: str
    shape: str
    ms: float
    gbps: float | None = None
    tflops: float | None = None
    note: str = ""


def bench(fn: Callable[[], object], iters: int = 30, warm: int = 5) -> float:
    """Median milliseconds of fn over iters CUDA-event-timed runs."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth() -> Row:
    src = torch.empty(2 * 1024**3 // 2, dtype=DT, device=DEV)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return Row("device copy", "2 GiB", ms, gbps=2 * src.numel() * 2 / ms / 1e6, note="read+write")


def decode_rows(copy_gbps: float) -> list[Row]:
    rows = []
    for bs, ctx, hq, hkv, d in (
        (64, 4096, 32, 8, 128),
        (256, 2048, 32, 8, 128),
        (1, 32768, 32, 8, 128),
        (1, 4096, 32, 8, 128),
        (128, 1024, 32, 8, 128),
        (256, 256, 32, 8, 128),
        (64, 4096, 32, 8, 64),
    ):
        slots = bs * ctx
        kc = torch.randn(slots + 1, hkv, d, device=DEV, dtype=DT)
        vc = torch.randn_like(kc)
        table = torch.randperm(slots, device=DEV, dtype=torch.int32).view(bs, ctx)  # scattered: the hard case
        rpi = torch.arange(bs, device=DEV, dtype=torch.int32)
        lens = torch.full((bs,), ctx, device=DEV, dtype=torch.int32)
        q = torch.randn(bs, hq, d, device=DEV, dtype=DT)
        out = torch.empty_like(q)
        ms = bench(partial(_C.decode_attention_cuda, out, q, kc, vc, table, rpi, lens, 1 / math.sqrt(d)))
        gb = 2 * slots * hkv * d * 2 / 1e9
        gbps = gb / ms * 1e3
        rows.append(
            Row(
                "decode_attention",
                f"bs{bs} ctx{ctx} {hq}/{hkv}h d{d}",
                ms,
                gbps=gbps,
                note=f"{100 * gbps / copy_gbps:.0f}% of copy",
            )
        )
        del kc, vc, table
    return rows


def extend_rows() -> list[Row]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for seq, d in ((1024, 128), (4096, 128), (4096, 64)):
        b, hq, hkv = max(1, 16384 // seq), 32, 8
        tokens = b * seq
        kc = torch.randn(tokens, hkv, d, device=DEV, dtype=DT)
        vc = torch.randn_like(kc)
        table = torch.arange(tokens, device=DEV, dtype=torch.int32).view(b, seq)
        rpi = torch.arange(b, device=DEV, dtype=torch.int32)
        lens = torch.full((b,), seq, device=DEV, dtype=torch.int32)
        starts = torch.arange(b, device=DEV, dtype=torch.int32) * seq
        q = torch.randn(tokens, hq, d, device=DEV, dtype=DT)
        out = torch.empty_like(q)
        flops = 4 * b * hq * seq * seq * d / 2  # causal
        ms = bench(
            partial(
                _C.extend_attention_cuda, out, q, kc, vc, table, rpi, lens, lens, starts, 1 / math.sqrt(d)
            )
        )
        shape = f"{b}x{seq} tok {hq}/{hkv}h d{d} causal"
        rows.append(Row("extend_attention", shape, ms, tflops=flops / ms / 1e9, note="paged, GQA"))
        fn = partial(
            _C.extend_attention_cuda, out, q, kc, vc, table, rpi, lens, lens, starts, 1 / math.sqrt(d)
        )
        rows.extend(variant_rows(fn, shape, flops, d))
        qs = q.view(b, seq, hq, d).transpose(1, 2).contiguous()
        ks = kc.view(b, seq, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, 1).contiguous()
        vs = vc.view(b, seq, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, 1).contiguous()
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    ms_ref = bench(partial(F.scaled_dot_product_attention, qs, ks, vs, is_causal=True))
                rows.append(
                    Row(f"sdpa {name}", shape, ms_ref, tflops=flops / ms_ref / 1e9, note="contiguous")
                )
            except RuntimeError as exc:
                rows.append(Row(f"sdpa {name}", shape, float("nan"), note=f"unavailable: {str(exc)[:60]}"))
        del kc, vc, qs, ks, vs
    rows.extend(ragged_extend_rows())
    return rows


def ragged_extend_rows() -> list[Row]:
    """A chunked-prefill-like batch: 8 requests, new tokens 256..2048 on cached prefixes 0..6144 (no SDPA
    equivalent in one call, so TFLOP/s only; compare with the 4k causal rows)."""
    ext = [2048, 256, 1024, 512, 2048, 768, 1536, 384]
    prefix = [0, 4096, 1024, 6144, 2048, 0, 512, 3072]
    hq, hkv, d = 32, 8, 128
    lens = [e + p for e, p in zip(ext, prefix, strict=True)]
    slots = sum(lens)
    kc = torch.randn(slots, hkv, d, device=DEV, dtype=DT)
    vc = torch.randn_like(kc)
    perm = torch.randperm(slots, device=DEV, dtype=torch.int32)
    table = torch.zeros(len(ext), max(lens), device=DEV, dtype=torch.int32)
    used = 0
    for i, n in enumerate(lens):
        table[i, :n] = perm[used : used + n]
        used += n
    rpi = torch.arange(len(ext), device=DEV, dtype=torch.int32)
    seq_t = torch.tensor(lens, device=DEV, dtype=torch.int32)
    ext_t = torch.tensor(ext, device=DEV, dtype=torch.int32)
    starts = torch.tensor([0, *torch.tensor(ext).cumsum(0)[:-1].tolist()], device=DEV, dtype=torch.int32)
    q = torch.randn(sum(ext), hq, d, device=DEV, dtype=DT)
    out = torch.empty_like(q)
    fn = partial(_C.extend_attention_cuda, out, q, kc, vc, table, rpi, seq_t, ext_t, starts, 1 / math.sqrt(d))
    ms = bench(fn)
    pairs = sum(e * p + e * (e + 1) / 2 for e, p in zip(ext, prefix, strict=True))
    shape = f"ragged 8 req {sum(ext)} new tok +prefix"
    flops = 4 * hq * d * pairs
    row = Row("extend_attention", shape, ms, tflops=flops / ms / 1e9, note="paged, scattered slots")
    return [row, *variant_rows(fn, shape, flops, d)]


def variant_rows(fn: Callable[[], object], shape: str, flops: float, d: int) -> list[Row]:
    """The same call with each other tensor-core kernel forced (LITE_SRT_EXTEND_KERNEL, read on every launch),
    so one run shows the sm_90a wgmma kernels beside the portable mma.sync kernel that sm_80 builds take."""
    rows = []
    for kernel in ("wgmma", "wgmma128", "wgmma1", "wgmma_ws", "wgmma_ws64", "mma32" if d <= 64 else "mma16"):
        os.environ["LITE_SRT_EXTEND_KERNEL"] = kernel
        try:
            ms = bench(fn)
        finally:
            del os.environ["LITE_SRT_EXTEND_KERNEL"]
        rows.append(Row(f"extend ({kernel})", shape, ms, tflops=flops / ms / 1e9, note="forced, A/B"))
    return rows


def elementwise_rows() -> list[Row]:
    rows = []
    t, h = 4096, 4096
    x, res = torch.randn(t, h, device=DEV, dtype=DT), torch.randn(t, h, device=DEV, dtype=DT)
    w = torch.randn(h, device=DEV, dtype=DT)
    out = torch.empty_like(x)
    ms = bench(partial(_C.rmsnorm_cuda, out, x, w, 1e-6))
    rows.append(Row("rmsnorm", f"{t}x{h}", ms, gbps=2 * x.numel() * 2 / ms / 1e6))
    ms = bench(partial(_C.fused_add_rmsnorm_cuda, x, res, w, 1e-6))
    rows.append(Row("fused_add_rmsnorm", f"{t}x{h}", ms, gbps=4 * x.numel() * 2 / ms / 1e6))
    g = torch.randn(t, 2 * 14336, device=DEV, dtype=DT)
    o = torch.empty(t, 14336, device=DEV, dtype=DT)
    ms = bench(partial(_C.silu_and_mul_cuda, o, g))
    rows.append(Row("silu_and_mul", f"{t}x2x14336", ms, gbps=(g.numel() + o.numel()) * 2 / ms / 1e6))
    hq, hkv, d = 32, 8, 128
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=DEV, dtype=DT)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    cache = torch.randn(131072, d, device=DEV, dtype=torch.float32)
    pos = torch.randint(0, 131072, (t,), device=DEV)
    ms = bench(partial(_C.rotary_embedding_cuda, pos, q, k, cache, True))
    rows.append(
        Row(
            "rotary_embedding",
            f"{t} tok {hq}/{hkv}h d{d}",
            ms,
            gbps=(2 * (hq + hkv) * d * 2 + d * 4) * t / ms / 1e6,
        )
    )
    kc = torch.empty(1 << 20, hkv, d, device=DEV, dtype=DT)
    vc = torch.empty_like(kc)
    kk, vv = torch.randn(t, hkv, d, device=DEV, dtype=DT), torch.randn(t, hkv, d, device=DEV, dtype=DT)
    slots = torch.randperm(1 << 20, device=DEV)[:t]
    ms = bench(partial(_C.store_kv_cuda, kc, vc, slots, kk, vv))
    rows.append(Row("store_kv", f"{t} tok {hkv}h d{d}", ms, gbps=4 * kk.numel() * 2 / ms / 1e6))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"\n{'kernel':<20} {'shape':<34} {'ms':>9} {'GB/s':>8} {'TFLOP/s':>8}  note")
    for r in rows:
        gb = f"{r.gbps:8.0f}" if r.gbps is not None else " " * 8
        tf = f"{r.tflops:8.1f}" if r.tflops is not None else " " * 8
        print(f"{r.kernel:<20} {r.shape:<34} {r.ms:9.4f} {gb} {tf}  {r.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default="bench_kernels.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    copy = copy_bandwidth()
    rows = [copy]
    for section in (lambda: decode_rows(copy.gbps), extend_rows, elementwise_rows):
        for row in section():
            print(json.dumps(asdict(row)), flush=True)
            rows.append(row)
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": [asdict(r) for r in rows]}, f, indent=1)
    print_table(rows)


if __name__ == "__main__":
    main()
