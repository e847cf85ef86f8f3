"""Where a decode step's time goes: GPU kernel time by kernel, against the step's wall time.

  python scripts/profile_step.py --model-path llama-3.1-8b --load-format dummy --batch-size 1 --context 1024
  python scripts/profile_step.py --prefill 4096 4096   # one prefill step of two 4k-token prompts instead

Runs eager decode steps under torch.profiler (kernel durations from CUPTI) and times graph replays of the same
step with CUDA events. The gap between the summed kernel time and the graph replay time is launch/ramp cost
between kernels; the table (printed last, also written as JSON) groups kernels by name.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from lite_srt.config import ServerArgs
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.engine.model_runner import ModelRunner
from lite_srt.loader import load_model_config


def decode_batch(runner: ModelRunner, bs: int, context: int) -> ForwardBatch:
    rows = [runner.table.alloc() for _ in range(bs)]
    slots = torch.arange(bs * (context + 1), dtype=torch.int64).view(bs, context + 1)
    for r, s in zip(rows, slots):
        runner.table.write(r, 0, s)
    return ForwardBatch.build(
        ForwardMode.DECODE,
        [1] * bs,
        [context] * bs,
        slots[:, context],
        rows,
        [context + 1] * bs,
        [1] * bs,
        runner.table.table,
        runner.device,
    )


def prefill_batch(runner: ModelRunner, lens: list[int]) -> ForwardBatch:
    rows = [runner.table.alloc() for _ in lens]
    slots = torch.arange(sum(lens), dtype=torch.int64)
    for r, s in zip(rows, slots.split(lens), strict=True):
        runner.table.write(r, 0, s)
    positions = [p for n in lens for p in range(n)]
    return ForwardBatch.build(
        ForwardMode.EXTEND,
        [1] * sum(lens),
        positions,
        slots,
        rows,
        lens,
        lens,
        runner.table.table,
        runner.device,
    )


def time_us(step: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Mean microseconds of step() over iters calls, timed with CUDA events after warmup calls."""
    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def time_captured(runner: ModelRunner, fb: ForwardBatch, iters: int) -> float:
    """The same prefill forward captured whole in one CUDA graph (an upper bound on what graphs could save)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        runner.model(fb, runner.pool)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runner.model(fb, runner.pool)
    return time_us(graph.replay, iters)


def time_graph(runner: ModelRunner, fb: ForwardBatch, iters: int) -> float:
    assert runner.graphs is not None and runner.graphs.can_run(fb)
    return time_us(lambda: runner.graphs.replay(fb), iters)


def kernel_table(runner: ModelRunner, fb: ForwardBatch, iters: int) -> dict[str, tuple[int, float]]:
    for _ in range(3):
        runner.model(fb, runner.pool)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            runner.model(fb, runner.pool)
        torch.cuda.synchronize()
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            entry = by_name[ev.name[:80]]
            entry[0] += 1
            entry[1] += ev.device_time_total
    return {k: (int(v[0]) // iters, v[1] / iters) for k, v in by_name.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default="llama-3.1-8b")
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--prefill", type=int, nargs="+", default=None, help="prompt lengths of one prefill step")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default="profile_step.json")
    a = p.parse_args()
    tokens = sum(a.prefill) if a.prefill else a.batch_size * (a.context + 1)
    args = ServerArgs(
        model_path=a.model_path,
        load_format=a.load_format,
        max_total_tokens=tokens + 16,
        context_length=max(a.prefill or [a.context]) + 8,
        max_running_requests=max(len(a.prefill or []), a.batch_size, 8),
        cuda_graph_max_bs=max(a.batch_size, 8),
        chunked_prefill_size=max(tokens, 2048),
        disable_cuda_graph=bool(a.prefill),
    )
    runner = ModelRunner(args, load_model_config(a.model_path), a.model_path, args.context_length)
    if a.prefill:
        fb = prefill_batch(runner, a.prefill)
        graph_us = time_us(lambda: runner.model(fb, runner.pool), a.iters)
        what = f"prefill {'+'.join(map(str, a.prefill))} tokens (eager)"
        try:
            what += f"; one CUDA graph of it: {time_captured(runner, fb, a.iters):.0f} us"
        except RuntimeError as exc:
            what += f"; not capturable: {str(exc)[:80]}"
    else:
        fb = decode_batch(runner, a.batch_size, a.context)
        graph_us = time_graph(runner, fb, a.iters)
        what = f"decode bs {a.batch_size}, context {a.context}"
    table = kernel_table(runner, fb, a.iters)
    kernel_us = sum(t for _, t in table.values())
    launches = sum(n for n, _ in table.values())
    json.dump({"graph_us": graph_us, "kernel_us": kernel_us, "kernels": table}, open(a.out, "w"), indent=1)
    print(f"\n{torch.cuda.get_device_name()}: {what}")
    print(f"{'kernel':80} {'per step':>8} {'us/step':>9} {'share':>6}")
    for name, (n, us) in sorted(table.items(), key=lambda kv: -kv[1][1])[:20]:
        print(f"{name:80} {n:8d} {us:9.1f} {us / kernel_us:6.1%}")
    print(
        f"kernels per step: {launches}; summed kernel time {kernel_us:.0f} us; step (graph replay or eager)"
        f" {graph_us:.0f} us;"
    )
    print(
        f"between kernels: {graph_us - kernel_us:.0f} us ({(graph_us - kernel_us) / max(launches, 1):.2f} us each)"
    )


if __name__ == "__main__":
    main()
