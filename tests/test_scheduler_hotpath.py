"""The scheduler's per-step fast paths, driven through the real Scheduler with a scripted instant runner.

The runner's "model" emits a token that depends only on the position being sampled, so outputs are the same
whatever the batching (overlap on or off), and stop conditions can be placed exactly. It also checks every
forward batch it is handed against the req->token table, and records the sampling batches, so the decode
fast path (numpy slot allocation, plain-greedy sampling batches) is checked against what it replaced.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from lite_srt.config import ServerArgs
from lite_srt.engine import scheduler as scheduler_mod
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.engine.io import RequestOutput
from lite_srt.engine.model_runner import StepResult
from lite_srt.engine.request import OutputQueue, Req, RequestGroup, init_output_state
from lite_srt.engine.sampler import SamplingBatch
from lite_srt.engine.scheduler import Scheduler
from lite_srt.mem.req_table import ReqToTokenTable
from lite_srt.sampling_params import SamplingParams
from lite_srt.tokenizer.null_tokenizer import NullTokenizer

VOCAB = 1000
EOS = 2
CONTEXT = 96


def token_at(position: int) -> int:
    """The scripted model: the token sampled after `position` (never EOS, never a low id)."""
    return 100 + (position * 37) % 800


@dataclass
class ScriptedRunner:
    table: ReqToTokenTable
    pool: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(num_slots=4096))
    device: torch.device = torch.device("cpu")
    chunked_prefill_size: int = 64
    cascade_attention: bool = False
    max_running_requests: int = 8
    next_tokens: torch.Tensor = field(default_factory=lambda: torch.zeros(64, dtype=torch.int64))
    decode_batches: int = 0
    mixed_cascades: int = 0  # mixed steps whose decode half carried cascade groups
    cascade_groups: list[tuple[int, int]] = field(
        default_factory=list
    )  # (rows, shared length) per group seen
    sampling: list[SamplingBatch] = field(default_factory=list)

    def step(self, fb: ForwardBatch, rows: list[int], sb: SamplingBatch | None) -> StepResult:
        if fb.mode is ForwardMode.DECODE:
            self._check_decode(fb)
            self.decode_batches += 1
        elif fb.cascade is not None:  # a mixed step's decode half
            assert fb.mixed is not None
            self._check_cascade(fb.cascade, fb.mixed.req_pool_indices[1], fb.mixed.seq_lens[1])
            self.mixed_cascades += 1
        if sb is None:
            return StepResult([], None, None, None, 0.0)
        self.sampling.append(sb)
        last = fb.extend_start_loc + fb.extend_lens - 1
        return StepResult([token_at(int(fb.positions[last[i]])) for i in rows], None, None, None, 0.0)

    def _check_decode(self, fb: ForwardBatch) -> None:
        """Every new position's slot is in the table, and seq_lens end right after it. (Prefill rows are left
        out: a prompt handed to the prefix cache may point its table row at older duplicate slots.)"""
        for b, row in enumerate(fb.req_pool_indices.tolist()):
            lo = int(fb.extend_start_loc[b])
            hi = lo + int(fb.extend_lens[b])
            pos = fb.positions[lo:hi]
            assert int(fb.seq_lens[b]) == int(pos[-1]) + 1
            assert torch.equal(self.table.table[row, pos].to(torch.int64), fb.out_cache_loc[lo:hi])
        if fb.cascade is not None:
            self._check_cascade(fb.cascade, fb.req_pool_indices, fb.seq_lens)

    def _check_cascade(self, c, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor) -> None:
        """Every cascade group's rows hold the same slots for their shared positions (whole 64-key tiles, short
        of each row's own last position), and rows outside the groups share nothing."""
        shared, rows = c.shared_lens.tolist(), req_pool_indices.tolist()
        grouped = set()
        for start, size in zip(c.group_start.tolist(), c.group_size.tolist()):
            length = shared[start]
            assert size >= 2 and length >= 64 and length % 64 == 0
            first = self.table.table[rows[start], :length]
            for b in range(start, start + size):
                assert shared[b] == length and length < int(seq_lens[b])
                assert torch.equal(self.table.table[rows[b], :length], first)
                grouped.add(b)
            self.cascade_groups.append((size, length))
        assert all(shared[b] == 0 for b in range(len(rows)) if b not in grouped)
        assert c.max_shared == max(shared) and c.max_group == max(c.group_size.tolist())


def make_scheduler(
    overlap: bool, max_running: int = 8, context: int = CONTEXT, cascade: bool = False, radix: bool = True
) -> tuple[Scheduler, ScriptedRunner]:
    runner = ScriptedRunner(
        ReqToTokenTable(max_running * 2 + 16, context + 1, "cpu"),
        cascade_attention=cascade,
        max_running_requests=max_running,
    )
    args = ServerArgs(
        max_running_requests=max_running, disable_overlap_schedule=not overlap, disable_radix_cache=not radix
    )

    async def run_step(fb: ForwardBatch, rows: list[int], sb: SamplingBatch | None) -> StepResult:
        return runner.step(fb, rows, sb)

    return Scheduler(args, runner, run_step, context, VOCAB), runner  # type: ignore[arg-type]


def submit(
    sched: Scheduler, rid: str, prompt_len: int, prompt: list[int] | None = None, **params
) -> RequestGroup:
    p = SamplingParams(**params)
    p.validate()
    group = RequestGroup(rid, 1)
    if prompt is None:
        prompt = [100 + (i * 13 + len(rid)) % 800 for i in range(prompt_len)]
    req = Req(rid=rid, index=0, input_ids=prompt, params=p, seed=1, group=group, eos_ids=frozenset({EOS}))
    init_output_state(req, NullTokenizer(VOCAB, None, [EOS]))
    group.reqs.append(req)
    sched.add_group(group, None)
    return group


async def collect(group: RequestGroup) -> list[RequestOutput]:
    outs = [await group.queue.get()]
    while not outs[-1].finished:
        outs.append(await group.queue.get())
    return outs


async def run_all(
    overlap: bool, specs: dict[str, tuple[int, dict]]
) -> tuple[dict, Scheduler, ScriptedRunner]:
    sched, runner = make_scheduler(overlap)
    task = asyncio.ensure_future(sched.run_forever())
    groups = {rid: submit(sched, rid, n, **params) for rid, (n, params) in specs.items()}
    outs = {rid: await asyncio.wait_for(collect(g), 30) for rid, g in groups.items()}
    sched.stop()
    await task
    return outs, sched, runner


SPECS: dict[str, tuple[int, dict]] = {
    "plain": (5, {"temperature": 0.0, "max_new_tokens": 20, "ignore_eos": True}),
    "stop-id": (7, {"temperature": 0.0, "max_new_tokens": 40, "stop_token_ids": [token_at(12)]}),
    "min-tokens": (7, {"temperature": 0.0, "max_new_tokens": 40, "min_new_tokens": 9}),
    "context": (80, {"temperature": 0.0, "max_new_tokens": 50, "ignore_eos": True}),
    "stop-string": (4, {"temperature": 0.0, "max_new_tokens": 30, "stop": [f"<{token_at(9)}>"]}),
}


@pytest.mark.parametrize("overlap", [True, False])
async def test_requests_end_at_their_stop_conditions_through_decode_fast_path(overlap: bool) -> None:
    outs, sched, runner = await run_all(overlap, SPECS)
    final = {rid: o[-1] for rid, o in outs.items()}
    assert runner.decode_batches > 10  # the pure-decode builder ran
    assert final["plain"].output_ids == [token_at(p) for p in range(4, 24)]
    assert final["plain"].finish_reason.type == "length"
    # Sampled after position 12: the prompt has 7 tokens (positions 0-6), so it is the 7th output token.
    assert final["stop-id"].output_ids[-1] == token_at(12) and len(final["stop-id"].output_ids) == 7
    assert final["stop-id"].finish_reason.matched == token_at(12)
    assert len(final["min-tokens"].output_ids) == 40  # no EOS is ever sampled; min tokens only bans it
    assert final["context"].completion_tokens == CONTEXT - 80  # the context ends it before max_new_tokens
    assert final["context"].finish_reason.type == "length"
    stop = f"<{token_at(9)}>"
    assert stop not in final["stop-string"].text and final["stop-string"].finish_reason.matched == stop
    assert final["stop-string"].text == "".join(f"<{token_at(p)}>" for p in range(3, 9))
    for rid, o in outs.items():  # deltas add up to the final text and ids
        assert "".join(x.delta_text for x in o) == final[rid].text
        assert sum((x.delta_ids for x in o), []) == final[rid].output_ids
    assert not sched.running and not sched.groups
    sched.kv.check_invariant()


async def test_overlap_on_and_off_give_the_same_outputs() -> None:
    on, _, _ = await run_all(True, SPECS)
    off, _, _ = await run_all(False, SPECS)
    assert {r: o[-1].output_ids for r, o in on.items()} == {r: o[-1].output_ids for r, o in off.items()}
    assert {r: o[-1].text for r, o in on.items()} == {r: o[-1].text for r, o in off.items()}


async def test_min_new_tokens_rows_keep_their_bans_and_plain_rows_build_nothing() -> None:
    specs = {k: SPECS[k] for k in ("plain", "min-tokens")}
    _, _, runner = await run_all(True, specs)
    banned_rows, plain_batches = 0, 0
    for sb in runner.sampling:
        if sb.banned is not None:
            # A ban is row * V + EOS for each row still short of min_new_tokens.
            banned_rows += sb.banned.numel()
            assert all(int(i) % VOCAB == EOS for i in sb.banned)
        elif sb.all_greedy and sb.stochastic is None and sb.penalties is None and not sb.return_logprobs:
            plain_batches += 1
    assert banned_rows == 9  # one per step until min_new_tokens (9) output tokens exist, overlap or not
    assert plain_batches > 20


@pytest.mark.parametrize("overlap", [True, False])
async def test_decode_batches_group_requests_sharing_a_cached_prefix(
    overlap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 330-token system prompts, five requests each: their decode batches carry cascade groups, and every
    group is checked against the table (ScriptedRunner._check_cascade). A request admitted before its prompt was
    cached holds its own slots and joins no group; the others share 320 positions (five whole tiles)."""
    monkeypatch.setattr(scheduler_mod, "MIN_SAVED_KEYS", 0)  # the groups here are small
    sched, runner = make_scheduler(overlap, max_running=16, context=400, cascade=True)
    task = asyncio.ensure_future(sched.run_forever())
    groups = []
    for p in range(3):
        system = [100 + (i * 7 + p * 31) % 800 for i in range(330)]
        for q in range(5):
            question = [300 + q * 11 + i for i in range(8)]
            groups.append(
                submit(
                    sched,
                    f"s{p}q{q}",
                    0,
                    system + question,
                    temperature=0.0,
                    max_new_tokens=24,
                    ignore_eos=True,
                )
            )
    outs = [await asyncio.wait_for(collect(g), 30) for g in groups]
    sched.stop()
    await task
    for o in outs:  # the scripted model's tokens: what attention grouping must not change
        assert o[-1].output_ids == [token_at(p) for p in range(337, 361)]
    assert sched.counters.cascade_steps > 0
    assert runner.mixed_cascades > 0  # decodes riding along later prompts' chunks are grouped too
    assert max(size for size, _ in runner.cascade_groups) >= 4
    assert {length for _, length in runner.cascade_groups} == {320}
    sched.kv.check_invariant()


async def test_output_queue_wakes_a_waiting_getter_in_order() -> None:
    q = OutputQueue()
    got: list[int] = []

    async def reader() -> None:
        for _ in range(3):
            got.append((await q.get()).index)

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0)
    assert not got
    for i in range(3):
        q.put_nowait(_output(i))
    await asyncio.wait_for(task, 5)
    assert got == [0, 1, 2] and q.empty()


async def test_output_queue_stays_usable_after_a_cancelled_get() -> None:
    q = OutputQueue()
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    q.put_nowait(_output(5))
    assert q.qsize() == 1
    assert (await asyncio.wait_for(q.get(), 5)).index == 5
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


def _output(i: int) -> RequestOutput:
    return RequestOutput("r", i, "", "", [], None, False, None, 1, 0, 0)


async def test_requests_sharing_a_cached_prefix_decode_side_by_side() -> None:
    """Running requests are kept in KV-slot order, so those sharing a cached prompt prefix are adjacent in every
    decode batch (the attention kernel then reads the shared KV once per group from DRAM, not once per request).
    Two prefixes, submitted interleaved."""
    sched, runner = make_scheduler(overlap=True)
    orders: list[list[str]] = []
    step = runner.step

    def recording_step(fb: ForwardBatch, rows: list[int], sb: SamplingBatch | None) -> StepResult:
        if fb.mode is ForwardMode.DECODE:
            rid_of = {r.row: r.rid for r in sched.running}
            orders.append([rid_of[row][0] for row in fb.req_pool_indices.tolist()])
        return step(fb, rows, sb)

    runner.step = recording_step  # type: ignore[method-assign]
    task = asyncio.ensure_future(sched.run_forever())
    prefixes = {"a": [100 + i for i in range(40)], "b": [300 + i for i in range(40)]}
    groups = []
    for i in range(3):
        for name, prefix in prefixes.items():
            p = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
            group = RequestGroup(f"{name}{i}", 1)
            prompt = prefix + [700 + i] * 3
            req = Req(f"{name}{i}", 0, prompt, p, 1, group, frozenset({EOS}))
            init_output_state(req, NullTokenizer(VOCAB, None, [EOS]))
            group.reqs.append(req)
            sched.add_group(group, None)
            groups.append(group)
    await asyncio.gather(*(asyncio.wait_for(collect(g), 30) for g in groups))
    sched.stop()
    await task
    full = [o for o in orders if len(o) == 6]
    assert full, "no decode step ran all six requests together"
    for names in full:
        assert names in (["a"] * 3 + ["b"] * 3, ["b"] * 3 + ["a"] * 3), names
    # Later requests reused the prefixes from the cache (one may share a prefill step with its first user).
    assert sum(g.reqs[0].prompt_cached_tokens >= 40 for g in groups) >= 3


async def test_step_log_reports_prefill_steps_and_every_nth_decode_step(caplog) -> None:
    """One line per prefill step (new sequences, tokens, decodes riding along) and one per 5 decode steps."""
    sched, runner = make_scheduler(True)
    sched.step_log.decode_interval = 5
    caplog.set_level("INFO", logger="lite_srt.engine.scheduler")
    task = asyncio.ensure_future(sched.run_forever())
    first = submit(sched, "a", 12, temperature=0.0, max_new_tokens=60, ignore_eos=True)
    await asyncio.wait_for(first.queue.get(), 10)  # prefilled: "b" arrives while "a" decodes
    prompt = [500 + i for i in range(80)]  # shares nothing with "a"
    second = submit(sched, "b", 80, prompt, temperature=0.0, max_new_tokens=10, ignore_eos=True)
    for g in (first, second):
        await asyncio.wait_for(collect(g), 30)
    sched.stop()
    await task
    lines = [r.getMessage() for r in caplog.records]
    prefills = [m for m in lines if m.startswith("prefill:")]
    # "a" in one step; "b" (80 tokens, 64-token chunks) in two, mixed with "a"'s decodes.
    assert prefills[0].startswith("prefill: 1 new seqs, 12 new tokens, 0 cached, 0 decodes alongside")
    assert prefills[1].startswith("prefill: 1 new seqs, 63 new tokens, 0 cached, 1 decodes alongside")
    assert prefills[2].startswith("prefill: 0 new seqs, 17 new tokens, 0 cached, 1 decodes alongside")
    assert len(prefills) == 3 and sched.counters.mixed_steps == 2
    decodes = [m for m in lines if m.startswith("decode:")]
    assert len(decodes) == runner.decode_batches // 5 and decodes
    assert all("output tok/s" in m for m in decodes)


@pytest.mark.parametrize("radix", [True, False])
async def test_requests_sharing_an_uncached_prompt_start_compute_it_once(caplog, radix: bool) -> None:
    """Three prompts with the same 40-token start arrive together: the first computes it, the other two wait one
    step and reuse it from the cache, while an unrelated prompt is admitted in the first step. Without the radix
    cache there is nothing to reuse, so nobody waits."""
    sched, runner = make_scheduler(True, radix=radix)
    caplog.set_level("INFO", logger="lite_srt.engine.scheduler")
    shared = [300 + i for i in range(40)]
    prompts = {
        "a": shared + [700 + i for i in range(10)],
        "b": shared + [720 + i for i in range(10)],
        "c": shared + [740 + i for i in range(10)],
        "d": [900 + i for i in range(12)],
    }
    task = asyncio.ensure_future(sched.run_forever())
    groups = [
        submit(sched, rid, len(p), p, temperature=0.0, max_new_tokens=4, ignore_eos=True)
        for rid, p in prompts.items()
    ]
    finals = [(await asyncio.wait_for(collect(g), 30))[-1] for g in groups]
    sched.stop()
    await task
    prefills = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prefill:")]
    if not radix:  # FCFS: "a" and the first 14 tokens of "b" fill the 64-token step
        assert prefills[0].startswith("prefill: 2 new seqs, 64 new tokens, 0 cached")
        assert [f.cached_tokens for f in finals] == [0, 0, 0, 0]
        return
    assert prefills[0].startswith("prefill: 2 new seqs, 62 new tokens, 0 cached")  # "a" and "d"
    assert prefills[1].startswith("prefill: 2 new seqs, 20 new tokens, 80 cached")  # "b", "c": 40 cached each
    assert [f.cached_tokens for f in finals] == [0, 40, 40, 0]
    # Outputs are what the scripted model gives for these positions, whatever was reused.
    assert all(
        f.output_ids == [token_at(p) for p in range(len(prompts[r]) - 1, len(prompts[r]) + 3)]
        for f, r in zip(finals, prompts)
    )


@pytest.mark.parametrize("policy", ["fcfs", "lof"])
async def test_waiting_order_by_policy(policy: str) -> None:
    """lof takes the waiting requests with the most tokens left to generate first (arrival order among equals);
    fcfs keeps arrival order. Either way every request then runs to its length."""
    sched, runner = make_scheduler(overlap=True, max_running=2)
    sched.args = dataclasses.replace(sched.args, schedule_policy=policy)
    lengths = {"a": 5, "b": 40, "c": 12, "d": 40}
    groups = {
        rid: submit(sched, rid, 6, temperature=0.0, max_new_tokens=n, ignore_eos=True)
        for rid, n in lengths.items()
    }
    order = [r.rid for r in sched._ordered_waiting()]
    assert order == (["b", "d", "c", "a"] if policy == "lof" else ["a", "b", "c", "d"])
    task = asyncio.ensure_future(sched.run_forever())
    outs = {rid: await asyncio.wait_for(collect(g), 30) for rid, g in groups.items()}
    sched.stop()
    await task
    assert all(len(o[-1].output_ids) == lengths[rid] for rid, o in outs.items())
    assert not sched.running and not sched.groups and runner.decode_batches > 0
