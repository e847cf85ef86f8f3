"""The fused batch-1 decode kernel (csrc/fused/decode_step.cu) timed alone, against the unfused step, both as
CUDA graphs on the same weights and context, plus timing-only cuts of the kernel (LITE_SRT_FUSED_SKIP, results
wrong) that show where its time goes.

  python scripts/bench_fused_decode.py --model-path llama-3.1-8b --context 1024 --skips 0 2 1 4 8 16
  python scripts/bench_fused_decode.py --context 1024 2048 --unit-slots 1 2

--unit-slots also times the kernel with attention units of at most that many ring slots (LITE_SRT_FUSED_UNIT_SLOTS;
1: units of 32 keys, several per block; the default spans up to 4 slots, one unit per block).

Prints ms per step for each variant (best of --rounds x --iters replays) as a table last; writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from bench_decode_layer import time_graph

from lite_srt.config import ServerArgs
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.engine.fused_decode import FusedDecodeStep
from lite_srt.engine.model_runner import ModelRunner
from lite_srt.loader import load_model_config

SKIPS = {
    0: "fused kernel",
    1: "cut: no phase-barrier waits",
    2: "cut: no attention work",
    4: "cut: no qkv/o epilogue loads",
    8: "cut: no input loads",
    16: "cut: no weight-unit math",
    32: "cut: no split merge",
    64: "cut: attention warp does no work",
}


def decode_batch(runner: ModelRunner, context: int) -> ForwardBatch:
    row = runner.table.alloc()
    slots = torch.arange(context, dtype=torch.int64)
    runner.table.write(row, 0, slots)
    dev = runner.device

    def t(v: int) -> torch.Tensor:
        return torch.tensor([v], dtype=torch.int64, device=dev)

    return ForwardBatch(
        mode=ForwardMode.DECODE, input_ids=t(123), positions=t(context - 1), out_cache_loc=t(context - 1),
        req_pool_indices=t(row), seq_lens=t(context), extend_lens=t(1), extend_start_loc=t(0), logits_indices=t(0),
        req_to_token=runner.table.table,
    )  # fmt: skip


def graph_ms(fn, rounds: int, iters: int) -> float:
    """Best of `rounds` mean replay times (ms) of fn captured as a CUDA graph."""
    return min(time_graph(fn, iters) for _ in range(rounds)) / 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default="llama-3.1-8b")
    p.add_argument("--context", type=int, nargs="+", default=[1024])
    p.add_argument("--skips", type=int, nargs="+", default=[0])
    p.add_argument("--unit-slots", type=int, nargs="+", default=[])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    args = ServerArgs(
        model_path=a.model_path,
        load_format="dummy",
        max_total_tokens=max(a.context) + 16,
        disable_cuda_graph=True,
    )
    runner = ModelRunner(args, load_model_config(a.model_path), a.model_path, max(a.context) + 16)
    step = FusedDecodeStep(runner.model, runner.pool)
    rows = []
    with torch.inference_mode():
        for ctx in a.context:
            fb = decode_batch(runner, ctx)
            ms = graph_ms(lambda fb=fb: runner.model(fb, runner.pool), a.rounds, a.iters)
            rows.append({"context": ctx, "variant": "unfused model (graph)", "ms": ms})
            print(rows[-1], flush=True)
            for skip in a.skips:
                os.environ["LITE_SRT_FUSED_SKIP"] = str(skip)
                ms = graph_ms(lambda fb=fb: step(fb), a.rounds, a.iters)
                rows.append({"context": ctx, "variant": SKIPS.get(skip, f"cuts {skip}"), "ms": ms})
                print(rows[-1], flush=True)
            os.environ.pop("LITE_SRT_FUSED_SKIP", None)
            for slots in a.unit_slots:
                os.environ["LITE_SRT_FUSED_UNIT_SLOTS"] = str(slots)
                ms = graph_ms(lambda fb=fb: step(fb), a.rounds, a.iters)
                rows.append({"context": ctx, "variant": f"fused kernel, units of <= {slots} slots", "ms": ms})
                print(rows[-1], flush=True)
            os.environ.pop("LITE_SRT_FUSED_UNIT_SLOTS", None)
    print(f"\n{torch.cuda.get_device_name()}, {a.model_path} (dummy weights, bf16), batch 1")
    print("| context | variant | ms per step |\n|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['variant']} | {r['ms']:.3f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
