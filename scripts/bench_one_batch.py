"""One static batch through the model runner: prefill latency, then decode step latency, in physical units.

  python scripts/bench_one_batch.py --model-path llama-3.1-8b --load-format dummy --batch-size 1 64 \\
      --input-len 128 1024 --output-len 32

For each (batch size, input length): one prefill of the whole batch, then --output-len decode steps (greedy,
sampling included). Reports ms per step, tokens/s, achieved GB/s (weights + KV read per decode step) and
TFLOP/s (2 * params * tokens, plus attention) next to each other. Prints a table last and writes JSON.
With --tp-size N the worker ranks are spawned as the server does, and GB/s and TFLOP/s are per GPU (rank 0's
shard).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from lite_srt.config import ServerArgs
from lite_srt.distributed import launch as tp_launch
from lite_srt.distributed.group import TPGroup
from lite_srt.distributed.step_sync import send_stop
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.engine.model_runner import ModelRunner
from lite_srt.engine.sampler import SamplerRow, SamplingBatch
from lite_srt.loader import load_model_config
from lite_srt.sampling_params import SamplingParams


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(runner: ModelRunner, bs: int, input_len: int, output_len: int) -> dict:
    cfg, dev = runner.cfg, runner.device
    rows = [runner.table.alloc() for _ in range(bs)]
    total = input_len + output_len
    slots = torch.arange(bs * total, dtype=torch.int64).view(bs, total)
    for r, s in zip(rows, slots):
        runner.table.write(r, 0, s)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, cfg.vocab_size, (bs, input_len), generator=gen).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=output_len)
    sampling = SamplingBatch.build(
        [SamplerRow(params, 0, 0, [], [], frozenset()) for _ in range(bs)], cfg.vocab_size, dev
    )
    fb = ForwardBatch.build(
        ForwardMode.EXTEND,
        [t for p in prompts for t in p],
        list(range(input_len)) * bs,
        slots[:, :input_len].reshape(-1),
        rows,
        [input_len] * bs,
        [input_len] * bs,
        runner.table.table,
        dev,
    )
    sync(dev)
    t0 = time.perf_counter()
    out = runner.step(fb, list(range(bs)), sampling, runner.take_table_writes())
    sync(dev)
    prefill_s = time.perf_counter() - t0
    tokens = out.next_token_ids
    step_times = []
    for i in range(output_len - 1):
        pos = input_len + i
        fb = ForwardBatch.build(
            ForwardMode.DECODE,
            tokens,
            [pos] * bs,
            slots[:, pos],
            rows,
            [pos + 1] * bs,
            [1] * bs,
            runner.table.table,
            dev,
        )
        t0 = time.perf_counter()
        tokens = runner.step(
            fb, list(range(bs)), sampling, runner.take_table_writes()
        ).next_token_ids  # .tolist() syncs
        step_times.append(time.perf_counter() - t0)
    for r in rows:
        runner.table.free(r)
    steady = sorted(step_times[2:] or step_times)
    decode_s = steady[len(steady) // 2]
    n_params = sum(p.numel() for p in runner.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    kv_bytes_per_tok = runner.pool.bytes_per_token
    ctx = input_len + output_len // 2
    decode_bytes = weight_bytes + bs * ctx * kv_bytes_per_tok
    attn_flops = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim
    prefill_flops = bs * (2 * n_params * input_len + attn_flops * input_len * input_len / 2)
    return {
        "batch_size": bs,
        "input_len": input_len,
        "output_len": output_len,
        "prefill_ms": prefill_s * 1e3,
        "prefill_tok_s": bs * input_len / prefill_s,
        "prefill_TFLOPs": prefill_flops / prefill_s / 1e12,
        "decode_ms": decode_s * 1e3,
        "decode_tok_s": bs / decode_s,
        "decode_GBps": decode_bytes / decode_s / 1e9,
        "decode_TFLOPs": bs * (2 * n_params + attn_flops * ctx) / decode_s / 1e12,
    }


def profiled(fn, path: str | None, tag: str):
    """fn(), under torch.profiler when `path` is given: its chrome trace to path (tagged per case), and the
    kernels' GPU time printed, to set against the measured step time (the rest is the GPU waiting)."""
    if path is None:
        return fn()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        out = fn()
    root, ext = os.path.splitext(path)
    prof.export_chrome_trace(f"{root}_{tag}{ext or '.json'}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default="llama-3.1-8b")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1])
    p.add_argument("--input-len", type=int, nargs="+", default=[128])
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--disable-custom-all-reduce", action="store_true", help="NCCL only at tp > 1 (A/B)")
    p.add_argument("--out", default="bench_one_batch.json")
    p.add_argument(
        "--profile", default=None, help="chrome trace of the measured runs (torch.profiler) to this path"
    )
    a = p.parse_args()
    max_bs = max(a.batch_size)
    longest = max(a.input_len) + a.output_len
    args = ServerArgs(
        model_path=a.model_path,
        load_format=a.load_format,
        dtype=a.dtype,
        device=a.device,
        max_total_tokens=max_bs * longest,
        max_running_requests=max_bs,
        chunked_prefill_size=max(2048, max_bs * max(a.input_len)),
        disable_cuda_graph=a.disable_cuda_graph,
        cuda_graph_max_bs=max_bs,
        context_length=longest + 1,
        tp_size=a.tp_size,
        disable_custom_all_reduce=a.disable_custom_all_reduce,
    )
    workers, tp = None, TPGroup.single()
    if a.tp_size > 1:
        addr = tp_launch.init_addr(args)
        workers = tp_launch.start_workers(args, addr)
        tp = tp_launch.join_group(args, 0, addr)
        args = args.replace(device=tp_launch.rank_device(args, 0))
    runner = ModelRunner(args, load_model_config(a.model_path), a.model_path, longest + 1, tp)
    if runner.gemv_choice is not None:  # the startup choice of one-row linear kernels (engine/gemv_tuning.py)
        c = runner.gemv_choice
        print(
            f"batch-1 step at startup: native GEMV {c.native_ms:.3f} ms, cuBLAS {c.cublas_ms:.3f} ms",
            flush=True,
        )
    fc = runner.fused_choice  # the startup choice of the fused batch-1 step (engine/fused_decode.py)
    if fc is not None:
        print(
            f"fused batch-1 step at startup: {fc.fused_ms:.3f} ms fused, {fc.unfused_ms:.3f} ms unfused",
            flush=True,
        )
    results = []
    for bs in a.batch_size:
        for n in a.input_len:
            run_case(runner, bs, n, min(a.output_len, 4))  # warm-up (allocator, kernels)
            r = profiled(lambda bs=bs, n=n: run_case(runner, bs, n, a.output_len), a.profile, f"bs{bs}_in{n}")
            r["cuda_graph"] = runner.graphs is not None
            r["custom_all_reduce"] = tp.custom_ar is not None
            r["pdl"] = runner.pdl
            results.append(r)
            print(json.dumps(r), flush=True)
    if workers is not None:
        send_stop(tp)
        workers.stop()
        tp_launch.leave_group()
    device = torch.cuda.get_device_name() if runner.device.type == "cuda" else "cpu"
    with open(a.out, "w") as f:
        json.dump({"device": device, "args": vars(a), "results": results}, f, indent=2)
    print(
        f"\n{device}, {a.model_path} ({runner.dtype}), tp {a.tp_size}, cuda graphs: {runner.graphs is not None},"
        f" custom all-reduce: {tp.custom_ar is not None}, PDL: {runner.pdl}"
    )
    print(
        f"{'bs':>4}{'in':>6}{'prefill ms':>12}{'prefill TF/s':>13}{'decode ms':>11}{'tok/s':>9}{'GB/s':>8}"
        f"{'TF/s':>7}"
    )
    for r in results:
        print(
            f"{r['batch_size']:>4}{r['input_len']:>6}{r['prefill_ms']:>12.2f}{r['prefill_TFLOPs']:>13.1f}"
            f"{r['decode_ms']:>11.3f}{r['decode_tok_s']:>9.1f}{r['decode_GBps']:>8.0f}{r['decode_TFLOPs']:>7.2f}"
        )


if __name__ == "__main__":
    main()
