"""Scheduler per-step CPU cost: the event loop's work per decode step, with the model taken out.

  python scripts/bench_scheduler.py                       # 64/128/256 streams, 128 in / 512 out, overlap on+off
  python scripts/bench_scheduler.py --streams 256 --tokenizer /path/model.gguf --profile out.prof
  python scripts/bench_scheduler.py --streams 512 --shared-prefix 2048 --cascade   # + cascade grouping

Drives the real `Scheduler` (built the way `AsyncEngine.start` builds it) with a fake runner whose `step`
returns random tokens at once: no forward pass, CPU tensors only. Requests are created the way
`AsyncEngine.generate` creates them (detokenizer, stop matcher) and every one is consumed through a
`RequestStream` task, so the per-token output path (detokenization, RequestOutput objects, queue puts and
gets) is measured too. Everything arrives at once; the clock runs from the first to the last decode step
while every stream is running, so the number is the event loop's time per decode step at that concurrency.
On a GPU server that time must fit inside the GPU's step (~6-9 ms for Llama-3.1-8B at 100-250 streams).

Prints a table last and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import random
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from lite_srt.config import ServerArgs
from lite_srt.engine.async_engine import RequestStream
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.engine.model_runner import StepResult
from lite_srt.engine.request import Req, RequestGroup, init_output_state
from lite_srt.engine.sampler import SamplingBatch
from lite_srt.engine.scheduler import Scheduler
from lite_srt.mem.req_table import ReqToTokenTable
from lite_srt.sampling_params import SamplingParams
from lite_srt.tokenizer.null_tokenizer import NullTokenizer

VOCAB = 128256  # Llama-3's vocabulary, the serving bar's model
EOS_IDS = frozenset({128001, 128009})


@dataclass
class FakeRunner:
    """The parts of ModelRunner the scheduler uses; `step` samples uniformly random tokens instantly."""

    pool: SimpleNamespace
    table: ReqToTokenTable
    next_tokens: torch.Tensor
    device: torch.device
    chunked_prefill_size: int
    tokens: list[int]  # pre-drawn random tokens, handed out in slices so `step` itself costs ~nothing
    decode_steps: list[tuple[float, int]] = field(default_factory=list)  # (time, batch size)
    cascade_attention: bool = False
    max_running_requests: int = 256

    @classmethod
    def create(cls, num_slots: int, max_running: int, context_length: int, seed: int) -> FakeRunner:
        table = ReqToTokenTable(max_running * 2 + 16, context_length + 1, "cpu")
        return cls(
            pool=SimpleNamespace(num_slots=num_slots),
            table=table,
            next_tokens=torch.zeros(table.max_reqs, dtype=torch.int64),
            device=torch.device("cpu"),
            chunked_prefill_size=2048,
            max_running_requests=max_running,
            tokens=[random.Random(seed).randrange(100, VOCAB) for _ in range(1 << 16)],
        )

    def step(self, batch: ForwardBatch, sample_rows: list[int], sampling: SamplingBatch | None) -> StepResult:
        if batch.mode is ForwardMode.DECODE:
            self.decode_steps.append((time.perf_counter(), batch.batch_size))
        if not sample_rows or sampling is None:
            return StepResult([], None, None, None, 0.0)
        # Ids away from the low (special) ones, like real text; a different slice each step.
        start = (len(self.decode_steps) * 7919) % (len(self.tokens) - len(sample_rows))
        tokens = self.tokens[start : start + len(sample_rows)]
        return StepResult(tokens, None, None, None, 0.0)


def make_groups(
    n: int,
    input_len: int,
    params: SamplingParams,
    tokenizer,
    seed: int,
    shared: int = 0,
    per_prefix: int = 16,
) -> list[RequestGroup]:
    """n requests of input_len random ids, after a `shared`-token prefix common to each run of per_prefix."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(100, VOCAB) for _ in range(shared)] for _ in range(-(-n // per_prefix))]
    groups = []
    for i in range(n):
        group = RequestGroup(f"r{i}", 1)
        ids = prefixes[i // per_prefix] + [rng.randrange(100, VOCAB) for _ in range(input_len)]
        req = Req(rid=group.rid, index=0, input_ids=ids, params=params, seed=i, group=group, eos_ids=EOS_IDS)
        init_output_state(req, tokenizer)
        group.reqs.append(req)
        groups.append(group)
    return groups


async def consume(stream: RequestStream) -> int:
    chunks = 0
    async for out in stream:
        chunks += bool(out.delta_text)  # what an SSE handler reads per update
    return chunks


async def run_case(args: argparse.Namespace, streams: int, overlap: bool, tokenizer) -> dict:
    context = args.shared_prefix + args.input_len + args.output_len + 8
    runner = FakeRunner.create(streams * context + 1024, streams, context, args.seed)
    runner.cascade_attention = args.cascade
    sargs = ServerArgs(
        max_running_requests=streams,
        disable_overlap_schedule=not overlap,
        max_total_tokens=runner.pool.num_slots,
    )

    async def run_step(fb: ForwardBatch, rows: list[int], sb: SamplingBatch | None) -> StepResult:
        return runner.step(fb, rows, sb)  # inline: the loop's own time is all that is measured

    sched = Scheduler(sargs, runner, run_step, context, VOCAB)  # type: ignore[arg-type]
    task = asyncio.get_running_loop().create_task(sched.run_forever())
    params = SamplingParams(
        max_new_tokens=args.output_len,
        temperature=args.temperature,
        ignore_eos=True,
        stop=list(args.stop or []),
    )
    params.validate()
    groups = make_groups(
        streams, args.input_len, params, tokenizer, args.seed, args.shared_prefix, args.per_prefix
    )
    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for g in groups:
        sched.add_group(g, None)
    consumers = [asyncio.ensure_future(consume(RequestStream(None, g))) for g in groups]  # type: ignore[arg-type]
    await asyncio.gather(*consumers)
    if prof:
        prof.disable()
        prof.dump_stats(f"{args.profile}.{streams}.{'overlap' if overlap else 'sync'}")
    wall = time.perf_counter() - t0
    sched.stop()
    await task
    sched.kv.check_invariant()
    full = [t for t, bs in runner.decode_steps if bs == streams]
    us_step = (full[-1] - full[0]) / (len(full) - 1) * 1e6 if len(full) > 1 else float("nan")
    return {
        "streams": streams,
        "overlap": overlap,
        "decode_steps_at_full_batch": len(full),
        "us_per_decode_step": us_step,
        "us_per_request_token": us_step / streams,
        "wall_s": wall,
        "tokens": sched.counters.generation_tokens,
        "cascade_steps": sched.counters.cascade_steps,
    }


def load_tokenizer(path: str | None):
    if path is None:
        return NullTokenizer(VOCAB, None, sorted(EOS_IDS))
    from lite_srt.tokenizer.tokenizer import load_tokenizer as load

    return load(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, like bench_serving's default")
    p.add_argument("--stop", nargs="*", help="stop strings for every request (exercises the stop matcher)")
    p.add_argument(
        "--tokenizer", help="a tokenizer (.gguf or model dir); default: NullTokenizer like dummy runs"
    )
    p.add_argument("--overlap", choices=["both", "on", "off"], default="both")
    p.add_argument("--repeat", type=int, default=1, help="runs per case; the best is reported")
    p.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the server runs on uvloop"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shared-prefix", type=int, default=0, help="tokens of a prefix shared by --per-prefix requests"
    )
    p.add_argument("--per-prefix", type=int, default=16)
    p.add_argument(
        "--cascade", action="store_true", help="let the scheduler build cascade groups (as on a GPU)"
    )
    p.add_argument("--profile", help="write cProfile stats to PROFILE.<streams>.<mode>")
    p.add_argument("--out", default="bench_scheduler.json")
    args = p.parse_args()
    torch.set_num_threads(1)  # the event loop is one thread; the forward thread would own the rest
    tokenizer = load_tokenizer(args.tokenizer)
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.overlap]
    rows = []
    for streams in args.streams:
        for overlap in modes:
            runs = [run(run_case(args, streams, overlap, tokenizer)) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["us_per_decode_step"])
            rows.append(best)
            print(json.dumps(best), flush=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": rows}, f, indent=2)
    print(
        f"\ninput {args.input_len} / output {args.output_len}, temperature {args.temperature}, "
        f"tokenizer {args.tokenizer or 'NullTokenizer'}, {args.loop}; event-loop time per decode step (fake runner, CPU)"
    )
    print("| streams | overlap | us / decode step | us / request-token | decode steps |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']} | {'on' if r['overlap'] else 'off'} | {r['us_per_decode_step']:,.0f} "
            f"| {r['us_per_request_token']:.2f} | {r['decode_steps_at_full_batch']} |"
        )


if __name__ == "__main__":
    main()
