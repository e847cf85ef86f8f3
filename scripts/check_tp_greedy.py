"""Greedy output of the real model at --tp N against --tp 1, in one dtype (a correctness check for GPUs).

  python scripts/check_tp_greedy.py --tp-size 2 --dtype float32     # token-exact expected
  python scripts/check_tp_greedy.py --tp-size 2 --dtype bfloat16    # reports where outputs first differ

Runs each prompt set through Engine(tp_size=1), then Engine(tp_size=N), prints a table (prompt, tokens, first
divergence) last and writes JSON. Exits 1 when float32 outputs differ.
"""

from __future__ import annotations

import argparse
import json
import sys

from lite_srt import Engine

PROMPTS = [
    "Hello",
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n',
    "请用一句话介绍一下北京。",
    "Emoji story: 🚀🌕👩‍🚀 The astronaut said",
    "The history of computing is a story of abstraction layered on abstraction. " * 12 + "In summary,",
]


def greedy(tp: int, a: argparse.Namespace) -> list[list[int]]:
    e = Engine(
        model_path=a.model_path,
        tp_size=tp,
        dtype=a.dtype,
        max_total_tokens=a.max_total_tokens,
        disable_cuda_graph=a.disable_cuda_graph,
    )
    try:
        out = e.generate(PROMPTS, sampling_params={"temperature": 0.0, "max_new_tokens": a.max_new_tokens})
        return [r["output_ids"] for r in out]
    finally:
        e.shutdown()


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default=None)
    p.add_argument("--tp-size", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-total-tokens", type=int, default=16384)
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--out", default="check_tp_greedy.json")
    a = p.parse_args()
    ref, got = greedy(1, a), greedy(a.tp_size, a)
    rows = [
        {"prompt": prompt[:40], "tokens": len(r), "first_difference": first_difference(r, g)}
        for prompt, r, g in zip(PROMPTS, ref, got)
    ]
    with open(a.out, "w") as f:
        json.dump({"tp_size": a.tp_size, "dtype": a.dtype, "rows": rows}, f, indent=2)
    exact = sum(r["first_difference"] is None for r in rows)
    print(f"\ntp {a.tp_size} vs tp 1, {a.dtype}: {exact}/{len(rows)} prompts token-exact")
    for r in rows:
        diff = "exact" if r["first_difference"] is None else f"differs at token {r['first_difference']}"
        print(f"  {r['prompt']!r:46} {r['tokens']:4d} tokens  {diff}")
    return 1 if a.dtype == "float32" and exact != len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
