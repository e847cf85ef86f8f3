"""The output throughput a bench_serving run can reach at most, from its arrivals and output lengths alone.

A request cannot finish before arrival + output_len decode steps, so at a given decode step time the run lasts at
least max over requests of (arrival + output_len * step), and the output throughput is at most the output tokens
over that. At Poisson arrivals one late request with a long output can set this ceiling. The workload is
rebuilt exactly as scripts/bench_serving.py draws it (same seed, --draws, dataset and arrival draws; with --draws
lite, --vocab must be the served model's, since drawing the prompt ids consumes the generator the lengths and
arrivals come from).

    python scripts/serving_bound.py --num-prompts 200 --random-input-len 1024 --random-output-len 1024 \\
        --request-rate 16 --step-ms 3.5 4.9 6 7

Prefill time and queueing are ignored, so the real run is slower than every row. Prints a table last.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import bench_serving as bs


def arrival_times(n: int, rate: float, draws: bs.Draws) -> list[float]:
    """The send times bench_serving sleeps through (seconds from the first request)."""
    return [0.0, *itertools.accumulate(draws.gaps(n, rate))][:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step-ms", type=float, nargs="+", default=[3.5, 4.9, 6.0, 7.0], help="decode step times")
    p.add_argument(
        "--vocab", type=int, default=128256, help="the served model's vocabulary (Llama-3.1: 128256)"
    )
    known, rest = p.parse_known_args(argv)
    args = bs.parse_args(rest)
    draws = bs.Draws.from_args(args)
    reqs = bs.DATASETS[args.dataset](args, known.vocab, draws)
    times = arrival_times(len(reqs), args.request_rate, draws)
    total = sum(r.output_len for r in reqs)
    print(f"{len(reqs)} requests, {total} output tokens, last arrival at {times[-1]:.2f} s")
    print(
        "| step ms | run lasts at least (s) | set by request (arrives s, output tokens) | output tok/s at most |"
    )
    print("|---|---|---|---|")
    for step in known.step_ms:
        end, i = max(
            (t + r.output_len * step / 1e3, i) for i, (t, r) in enumerate(zip(times, reqs, strict=True))
        )
        print(
            f"| {step:.2f} | {end:.2f} | #{i} ({times[i]:.2f}, {reqs[i].output_len}) | {total / end:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
