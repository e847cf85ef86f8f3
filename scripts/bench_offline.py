"""Offline throughput: many requests through lite_srt.Engine (no HTTP), optionally beside transformers.

  python scripts/bench_offline.py --num-prompts 32 --input-len 128 --output-len 64 --compare-hf
  python scripts/bench_offline.py --model-path llama-3.1-8b --load-format dummy --num-prompts 200 ...

Prompts are random token ids (seeded); every request generates exactly --output-len tokens (ignore_eos).
With --compare-hf, transformers `generate` runs the same prompts (batched, left-padded, greedy) in the same
process. Prints a table last and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch


def make_prompts(n: int, input_len: int, vocab: int, seed: int, range_ratio: float) -> list[list[int]]:
    rng = random.Random(seed)
    lo = max(1, int(input_len * range_ratio))
    # Stay clear of the lowest ids, which are special tokens in most vocabularies.
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(lo, input_len))] for _ in range(n)]


def run_lite(args: argparse.Namespace, prompts: list[list[int]]) -> dict:
    from lite_srt import Engine

    kw = {
        k: v
        for k, v in {
            "model_path": args.model_path,
            "load_format": args.load_format,
            "dtype": args.dtype,
            "device": args.device,
            "max_total_tokens": args.max_total_tokens,
            "disable_radix_cache": args.disable_radix_cache,
            "disable_overlap_schedule": args.disable_overlap_schedule,
            "disable_cuda_graph": args.disable_cuda_graph,
        }.items()
        if v is not None
    }
    engine = Engine(**kw)
    try:
        params = {"max_new_tokens": args.output_len, "temperature": 0.0, "ignore_eos": True}
        engine.generate(input_ids=prompts[0][:8], sampling_params={**params, "max_new_tokens": 4})  # warm-up
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        dt = time.perf_counter() - t0
    finally:
        engine.shutdown()
    out_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {
        "engine": "lite_srt",
        "seconds": dt,
        "output_tokens": out_tokens,
        "input_tokens": sum(map(len, prompts)),
        "outputs": [o["output_ids"] for o in outs],
    }


def run_hf(args: argparse.Namespace, prompts: list[list[int]]) -> dict:
    from transformers import AutoModelForCausalLM

    from lite_srt.config import ServerArgs
    from lite_srt.engine.async_engine import resolve_model_path

    path = resolve_model_path(ServerArgs(model_path=args.model_path))
    d, f = os.path.split(path) if path.endswith(".gguf") else (path, None)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    pad = 0
    t0 = time.perf_counter()
    out_tokens = 0
    for i in range(0, len(prompts), args.hf_batch_size):
        chunk = prompts[i : i + args.hf_batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            g = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=args.output_len,
                min_new_tokens=args.output_len,
                do_sample=False,
                pad_token_id=pad,
            )
        out_tokens += (g.shape[1] - width) * len(chunk)
    return {
        "engine": "transformers",
        "seconds": time.perf_counter() - t0,
        "output_tokens": out_tokens,
        "input_tokens": sum(map(len, prompts)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default=None)
    p.add_argument("--load-format", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--disable-radix-cache", action="store_true", default=None)
    p.add_argument("--disable-overlap-schedule", action="store_true", default=None)
    p.add_argument("--disable-cuda-graph", action="store_true", default=None)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=1.0, help="input lengths uniform in [ratio*L, L]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compare-hf", action="store_true", help="also run transformers generate on the same prompts"
    )
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--out", default="bench_offline.json")
    args = p.parse_args()

    from lite_srt.config import ServerArgs
    from lite_srt.engine.async_engine import resolve_model_path
    from lite_srt.loader import load_model_config

    vocab = load_model_config(resolve_model_path(ServerArgs(model_path=args.model_path))).vocab_size
    prompts = make_prompts(args.num_prompts, args.input_len, vocab, args.seed, args.range_ratio)
    results = [run_lite(args, prompts)]
    if args.compare_hf:
        results.append(run_hf(args, prompts))
    rows = []
    for r in results:
        r["output_tok_per_s"] = r["output_tokens"] / r["seconds"]
        r["total_tok_per_s"] = (r["output_tokens"] + r["input_tokens"]) / r["seconds"]
        rows.append(r)
    report = {
        "args": vars(args),
        "device": str(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
        "results": [{k: v for k, v in r.items() if k != "outputs"} for r in rows],
    }
    if len(rows) == 2:
        report["speedup_vs_hf"] = rows[0]["output_tok_per_s"] / rows[1]["output_tok_per_s"]
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\n{'engine':<14}{'seconds':>10}{'out tok':>10}{'out tok/s':>12}{'total tok/s':>13}")
    for r in rows:
        print(
            f"{r['engine']:<14}{r['seconds']:>10.2f}{r['output_tokens']:>10}{r['output_tok_per_s']:>12.1f}"
            f"{r['total_tok_per_s']:>13.1f}"
        )
    if "speedup_vs_hf" in report:
        print(f"lite_srt / transformers output throughput: {report['speedup_vs_hf']:.2f}x")


if __name__ == "__main__":
    main()
