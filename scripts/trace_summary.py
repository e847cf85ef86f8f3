"""Summarize a Chrome trace from POST /start_profile + /stop_profile (or any torch.profiler trace).

Prints, for the GPU: the traced window, how much of it some kernel was running (busy %), idle time split by gap
length (short gaps are launch latency; long ones mean the GPU waited on the CPU), and the kernels that took the
most time. For the CPU: the runtime calls that took the most time (graph launches, synchronizations, copies).

  python scripts/trace_summary.py /tmp/lite_srt-....trace.json [--top 15] [--json summary.json]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

GAP_EDGES_US = (5, 20, 100, 1000)


def short_name(name: str) -> str:
    """Kernel names without template arguments and parameter lists, so instantiations group together."""
    name = name.replace("(anonymous namespace)::", "")  # else the parameter-list strip eats our kernel names
    name = re.sub(r"<.*>", "", name)
    name = re.sub(r"\(.*\)", "", name)
    return name.strip()[:80]


def busy_and_gaps(kernels: list[tuple[float, float]]) -> tuple[float, dict[str, float], dict[str, int]]:
    """Union of kernel intervals (us), and idle time / count per gap-length bucket."""
    kernels.sort()
    busy = 0.0
    idle: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    cur_start, cur_end = kernels[0]
    for start, end in kernels[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            gap = start - cur_end
            bucket = next((f"<{e} us" for e in GAP_EDGES_US if gap < e), f">={GAP_EDGES_US[-1]} us")
            idle[bucket] += gap
            count[bucket] += 1
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    return busy, dict(idle), dict(count)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json")
    a = p.parse_args()
    with open(a.trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    summary: dict = {"trace": a.trace}
    if kernels:
        spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
        window = max(s[1] for s in spans) - min(s[0] for s in spans)
        busy, idle, gaps = busy_and_gaps(spans)
        by_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for e in kernels:
            k = by_kernel[short_name(e["name"])]
            k[0] += float(e["dur"])
            k[1] += 1
        top = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[: a.top]
        summary.update(
            window_ms=window / 1e3,
            gpu_busy_pct=100 * busy / window,
            kernels=len(kernels),
            idle_ms_by_gap={k: v / 1e3 for k, v in idle.items()},
            gaps_by_length=gaps,
            top_kernels=[{"name": n, "ms": v[0] / 1e3, "count": v[1]} for n, v in top],
        )
        print(f"window {window / 1e3:.1f} ms, GPU busy {100 * busy / window:.1f}%, {len(kernels)} kernels")
        print("idle time by gap length:")
        for bucket in [f"<{e} us" for e in GAP_EDGES_US] + [f">={GAP_EDGES_US[-1]} us"]:
            if bucket in idle:
                print(f"  {bucket:>10}: {idle[bucket] / 1e3:8.2f} ms in {gaps[bucket]} gaps")
        print(f"{'kernel':<80} {'ms':>9} {'count':>7} {'% window':>9}")
        for name, (dur, n) in top:
            print(f"{name:<80} {dur / 1e3:>9.2f} {n:>7} {100 * dur / window:>9.1f}")
    if runtime:
        by_call: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for e in runtime:
            c = by_call[e["name"]]
            c[0] += float(e["dur"])
            c[1] += 1
        top_calls = sorted(by_call.items(), key=lambda kv: -kv[1][0])[:8]
        summary["top_runtime_calls"] = [{"name": n, "ms": v[0] / 1e3, "count": v[1]} for n, v in top_calls]
        print(f"{'CUDA runtime call (CPU side)':<40} {'ms':>9} {'count':>7}")
        for name, (dur, n) in top_calls:
            print(f"{name:<40} {dur / 1e3:>9.2f} {n:>7}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
