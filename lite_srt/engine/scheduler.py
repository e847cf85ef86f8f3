"""Scheduler: one coroutine on the event loop doing continuous batching.

Each iteration: apply aborts, build one batch (a prefill batch when requests wait and memory admits them,
else a decode batch over the running requests, retracting the least-advanced request when the KV pool is
exhausted), launch it on the forward thread, then turn the previous batch's sampled tokens into outputs.

Overlap: batch N+1 is built and launched before batch N's results are processed, so the CPU work hides behind
the GPU. Decode inputs come from a device-side token table written by the sampler, so building N+1 needs no
token of N. A request's KV positions are committed when its batch is built; results of a step are dropped for
requests retracted or finished since (their `epoch` changed). `--disable-overlap-schedule` processes each batch
before building the next.

Ownership: every attribute here lives on the event-loop thread. The forward thread receives a ForwardBatch and
returns a StepResult; it never touches Req objects, the allocator or the prefix cache.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lite_srt.config import ServerArgs
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.engine.io import FinishReason, TokenLogprob
from lite_srt.engine.kv_manager import KVManager
from lite_srt.engine.model_runner import ModelRunner, StepResult
from lite_srt.engine.prefix_groups import MIN_SAVED_KEYS, CascadeBatch, find_groups
from lite_srt.engine.request import Req, ReqState, RequestGroup, SharedPrefix, make_output
from lite_srt.engine.sampler import SamplerRow, SamplingBatch
from lite_srt.engine.step_log import StepLog

logger = logging.getLogger(__name__)

# Admission keeps back ratio * (remaining output tokens of running requests) slots for their decodes. The ratio
# decays while decoding goes well and jumps after a retraction (SGLang's new-token-ratio idea).
_RATIO_INIT, _RATIO_MIN, _RATIO_DECAY = 0.7, 0.1, 0.002
_MAX_RESERVE_PER_REQ = 4096
_LPM_MAX_QUEUE = 128  # longest-prefix-match ordering costs a tree walk per waiting request
# In-batch prefix sharing: a waiting request whose first _SHARED_HEAD prompt tokens another request of the same
# prefill step is computing (uncached) waits a step, then reuses that prefix from the cache instead of
# computing it a second time (SGLang deprioritizes such requests too).
_SHARED_HEAD = 32


@dataclass
class ScheduledBatch:
    mode: ForwardMode
    reqs: list[Req]
    sampled: list[Req]  # requests that sample a token this step, in sampler row order
    epochs: list[int]  # their epochs when the batch was built
    sample_rows: list[int]  # their rows in the forward batch
    prefix_done: list[Req]  # prefix jobs whose shared prompt is complete after this step
    forward: ForwardBatch
    sampling: SamplingBatch | None


@dataclass
class InFlight:
    batch: ScheduledBatch
    result: asyncio.Future  # StepResult


@dataclass
class SchedulerCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    cache_hit_tokens: int = 0
    retractions: int = 0
    finished: int = 0
    mixed_steps: int = 0  # prefill steps that also decoded running requests
    cascade_steps: int = 0  # decode steps with cascade groups (prefix_groups.py)


class Scheduler:
    def __init__(
        self, args: ServerArgs, runner: ModelRunner, run_step: Callable, context_length: int, vocab_size: int
    ) -> None:
        self.args = args
        self.runner = runner
        self.run_step = (
            run_step  # async (ForwardBatch, sample_rows, SamplingBatch) -> StepResult on the thread
        )
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.kv = KVManager(runner.pool.num_slots, args.page_size, runner.table, args.disable_radix_cache)
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.penalized: set[Req] = set()  # running requests with penalties (they force a synced step)
        self.chunked: Req | None = None  # a request part-way through a chunked prefill
        self.groups: dict[str, RequestGroup] = {}
        self.pending_aborts: dict[str, str] = {}  # rid -> why
        self.counters = SchedulerCounters()
        self.new_token_ratio = _RATIO_INIT * args.schedule_conservativeness
        self.wakeup = asyncio.Event()
        self.stopped = False
        self.max_running = runner.max_running_requests  # the flag, or the runner's pool-sized default
        self.cascade = runner.cascade_attention
        self._cascade_memo: tuple[int, list[Req], CascadeBatch | None] | None = None
        self.step_log = StepLog(args.decode_log_interval)
        # The naive cache matches no prefix, so without the radix cache no request waits to share one.
        self.shares_prefixes = not args.disable_radix_cache

    # -- entry points (event loop) -------------------------------------------------------------------
    def add_group(self, group: RequestGroup, prefix_job: Req | None) -> None:
        self.groups[group.rid] = group
        for r in group.reqs:  # the context ends a request like max_new_tokens does
            r.max_output = min(r.params.max_new_tokens, self.context_length - len(r.input_ids))
        if prefix_job is not None:
            self.waiting.append(prefix_job)
        else:
            self.waiting.extend(group.reqs)
        self.wakeup.set()

    def abort(self, rid: str, message: str = "aborted by the client") -> bool:
        if rid not in self.groups:
            return False
        self.pending_aborts.setdefault(rid, message)
        self.wakeup.set()
        return True

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + (self.chunked is not None)

    async def run_forever(self) -> None:
        inflight: InFlight | None = None
        while not self.stopped:
            try:
                inflight = await self._iteration(inflight)
            except Exception as e:  # a bookkeeping bug must not leave callers waiting forever
                logger.exception("scheduler iteration failed; failing all requests in flight")
                inflight = None
                for group in list(self.groups.values()):
                    self._abort_group(group, f"internal error: {e!r}", kv_valid=False)

    async def _iteration(self, inflight: InFlight | None) -> InFlight | None:
        """Launch the next batch, then process the one before it. Returns the batch now in flight."""
        self._apply_aborts()
        if inflight is not None and self._must_sync():
            await self._complete(inflight)
            return None
        batch = self._schedule_prefill() or self._schedule_decode()
        if batch is None:
            if inflight is not None:
                await self._complete(inflight)
                return None
            if not self.running and not self.waiting and self.chunked is None:
                self.kv.check_invariant()  # idle: every slot is free or cached
            self.wakeup.clear()
            await self.wakeup.wait()
            return None
        launched = InFlight(batch, asyncio.ensure_future(self._run(batch)))
        if inflight is not None:
            await self._complete(inflight)
        if self.args.disable_overlap_schedule:
            await self._complete(launched)
            return None
        return launched

    async def _run(self, batch: ScheduledBatch) -> StepResult:
        if not batch.forward.batch_size:
            return StepResult([], None, None, None, 0.0)
        return await self.run_step(batch.forward, batch.sample_rows, batch.sampling)

    async def _complete(self, inflight: InFlight) -> None:
        try:
            result = await inflight.result
        except Exception as e:  # a failed step fails its requests; everyone else keeps being served
            logger.exception("forward step failed")
            self._fail_batch(inflight.batch, f"internal error in the forward step: {e}")
            return
        self._process(inflight.batch, result)

    def _must_sync(self) -> bool:
        """Penalties count every output token on the CPU, so a decode step of such a request needs the
        previous step's tokens processed first."""
        return any(r.pending for r in self.penalized) if self.penalized else False

    def stop(self) -> None:
        self.stopped = True
        self.wakeup.set()

    # -- prefill ---------------------------------------------------------------------------------------
    def _ordered_waiting(self) -> list[Req]:
        reqs = list(self.waiting)
        if self.args.schedule_policy == "lpm" and len(reqs) <= _LPM_MAX_QUEUE:

            def matched(r: Req) -> int:
                return 0 if r.shared else self.kv.cache.match_prefix(r.fill_ids[:-1]).length

            reqs.sort(key=matched, reverse=True)
        elif self.args.schedule_policy == "lof":
            reqs.sort(key=Req.remaining_new_tokens, reverse=True)  # stable: arrival order among equals
        return reqs

    def _decode_reserve(self, extra: list[Req]) -> int:
        remaining = sum(min(r.remaining_new_tokens(), _MAX_RESERVE_PER_REQ) for r in self.running + extra)
        return int(self.new_token_ratio * remaining)

    def _schedule_prefill(self) -> ScheduledBatch | None:
        if not self.waiting and self.chunked is None:
            return None
        # Mixed batches: running requests decode in the same step as the prefill chunk, so a long prompt does
        # not stall every stream for its whole prefill. They take one token each from the step's budget.
        decodes = (
            []
            if self.args.disable_mixed_chunk
            else [r for r in self.running if not self._finishes_with_pending(r)]
        )
        budget = self.runner.chunked_prefill_size - len(decodes)
        reqs: list[Req] = []
        new_slots: list[torch.Tensor] = []
        if self.chunked is not None:
            req, self.chunked = self.chunked, None
            slots = self._admit(req, budget, force=True)
            if slots is None:  # decodes hold the memory; they finish or get retracted first
                self.chunked = req
                return None
            reqs.append(req)
            new_slots.append(slots)
            budget -= len(slots)
        capacity = self.max_running - len(self.running)
        cached = 0  # prefix tokens reused by the requests starting this step
        computing = {h for h in map(_uncached_head, reqs) if h is not None}  # prompt heads prefilled now
        for req in self._ordered_waiting():
            if budget <= 0 or len(reqs) >= capacity or self.chunked is not None:
                break
            head = _prompt_head(req) if req.row is None and self.shares_prefixes else None
            if head is not None and head in computing:
                continue  # the same prompt start is being computed in this step: reuse it next step
            slots = self._admit(req, budget, force=not reqs and not self.running, admitted=reqs)
            if slots is None:
                break
            self.waiting.remove(req)
            reqs.append(req)
            new_slots.append(slots)
            budget -= len(slots)
            cached += req.cached_len
            if head is not None and req.cached_len < _SHARED_HEAD:
                computing.add(head)
        if not reqs:
            return None
        if not decodes or sum(self.kv.slots_needed(r, 1) for r in decodes) > self.kv.available():
            decodes = []  # mixed only when they fit without retraction: a pure decode step handles pressure
        self._log_prefill(reqs, new_slots, cached, len(decodes))
        if not decodes:
            return self._build(ForwardMode.EXTEND, reqs, new_slots)
        self.counters.mixed_steps += 1
        batch = self._build(ForwardMode.EXTEND, reqs, new_slots, decodes, self.kv.extend_decode(decodes))
        if self.cascade:  # the decode half is attended by the decode kernels (layers/attention.py)
            batch.forward.cascade = self._cascade_groups(decodes)
        return batch

    def _log_prefill(self, reqs: list[Req], new_slots: list[torch.Tensor], cached: int, decodes: int) -> None:
        fresh = len(reqs) - (reqs[0].kv_len > reqs[0].cached_len)  # a continued chunk is not a new sequence
        self.step_log.prefill(
            fresh, sum(int(s.numel()) for s in new_slots), cached, decodes, self._kv_usage(),
            len(self.running), len(self.waiting),
        )  # fmt: skip

    def _kv_usage(self) -> float:
        return 1.0 - self.kv.available() / max(self.kv.total_slots, 1)

    def _admit(
        self, req: Req, budget: int, force: bool, admitted: list[Req] | None = None
    ) -> torch.Tensor | None:
        """Allocates the slots of req's next prefill chunk (up to budget tokens), or returns None if memory does
        not admit it. `force` skips the decode reserve (nothing else would make progress)."""
        fresh = req.row is None
        if fresh and not self.kv.assign(req):
            return None
        if fresh and req.num_retractions == 0 and not req.is_prefix_job:
            req.prompt_cached_tokens = min(req.cached_len, len(req.input_ids))
            self.counters.cache_hit_tokens += req.prompt_cached_tokens
            self.counters.prompt_tokens += len(req.input_ids)
        need = req.fill_len - req.kv_len
        take = min(need, budget)
        reserve = 0 if force else self._decode_reserve((admitted or []) + [req])
        slots = self.kv.extend(req, take) if take else torch.empty(0, dtype=torch.int64)
        if slots is None or (reserve and self.kv.slots_needed(req, 0) + reserve > self.kv.available()):
            if slots is not None:  # the reserve for running requests' decodes would not be left
                self.kv.unextend(req, slots)
            if fresh:
                self.kv.release(req)
            return None
        if take < need:
            self.chunked = req
        return slots

    # -- decode ----------------------------------------------------------------------------------------
    def _schedule_decode(self) -> ScheduledBatch | None:
        if not self.running:
            return None
        self._make_room_for_decode()
        if not self.running:
            return None
        self.new_token_ratio = max(
            self.new_token_ratio - _RATIO_DECAY * self.args.schedule_conservativeness,
            _RATIO_MIN * self.args.schedule_conservativeness,
        )
        reqs = [r for r in self.running if len(r.output_ids) + r.pending < r.max_output]
        if not reqs:
            return None
        if self.step_log.decode_due():
            self.step_log.decode(
                self.counters.generation_tokens, len(reqs), self._kv_usage(), len(self.waiting)
            )
        return self._build(ForwardMode.DECODE, [], [], reqs, self.kv.extend_decode(reqs))

    def _finishes_with_pending(self, req: Req) -> bool:
        """The in-flight token is its last (length limits): no need to decode it further."""
        return len(req.output_ids) + req.pending >= req.max_output

    def _make_room_for_decode(self) -> None:
        """Evict, then retract the least-advanced requests until every running request fits one more token."""
        if len(self.running) * self.kv.page_size <= self.kv.available():
            return  # nobody needs more than a page: skip the per-request sum (the common case)
        while True:
            need = sum(self.kv.slots_needed(r, 1) for r in self.running if not self._finishes_with_pending(r))
            if need <= self.kv.available():
                return
            if len(self.running) == 1:
                self._finish(
                    self.running[0],
                    FinishReason(
                        "abort",
                        message="the KV cache is too small for this request; raise --max-total-tokens",
                    ),
                )
                return
            victim = min(self.running, key=lambda r: (len(r.output_ids), -len(r.input_ids)))
            self._retract(victim)

    def _retract(self, req: Req) -> None:
        self.running.remove(req)
        self.penalized.discard(req)
        self.kv.release(req)  # its computed KV goes to the prefix cache, so readmission can reuse it
        req.epoch += 1  # a token still in flight is dropped; re-prefill samples the same step again
        req.pending = 0
        req.state = ReqState.WAITING
        req.num_retractions += 1
        self.counters.retractions += 1
        self.waiting.appendleft(req)
        self.new_token_ratio = (
            min(self.new_token_ratio + 0.2, 1.0) if self.args.schedule_conservativeness else 0.0
        )
        logger.debug("retracted %s after %d tokens", req.rid, len(req.output_ids))

    # -- batch building --------------------------------------------------------------------------------
    def _build(
        self,
        mode: ForwardMode,
        reqs: list[Req],
        new_slots: list[torch.Tensor],
        decodes: list[Req] | None = None,
        decode_slots: torch.Tensor | None = None,
    ) -> ScheduledBatch:
        """The forward batch for prefill chunks `reqs` and one-token decodes `decodes`, whose new positions
        already have slots; commits those positions. A decode's input is the last token sampled for it, read
        on the device from the runner's token table (it may still be in flight)."""
        if mode is ForwardMode.DECODE:
            assert decode_slots is not None and decodes
            return self._build_decode(decodes, decode_slots)
        decodes = decodes or []
        gather_idx: list[int] = []
        input_ids: list[int] = []
        positions: list[int] = []
        sampled: list[Req] = []
        sample_rows: list[int] = []
        prefix_done: list[Req] = []
        fwd_reqs: list[Req] = []
        fwd_seq_lens: list[int] = []
        fwd_takes: list[int] = []
        for req, slots in zip(reqs, new_slots):
            take = int(slots.numel())
            input_ids.extend(req.fill_ids[req.kv_len : req.kv_len + take])
            positions.extend(range(req.kv_len, req.kv_len + take))
            if take:
                self.kv.commit(req, slots)
                fwd_reqs.append(req)
                fwd_seq_lens.append(req.kv_len)
                fwd_takes.append(take)
            if req.is_prefix_job:
                if req.kv_len == req.fill_len:
                    prefix_done.append(req)
            elif take and req.kv_len == req.fill_len:
                sample_rows.append(len(fwd_reqs) - 1)
                sampled.append(req)
                if req.state is ReqState.WAITING:  # prefill complete: decodes from the next step on
                    req.state = ReqState.RUNNING
                    if _uses_penalties(req):
                        self.penalized.add(req)
                    self.kv.cache_prompt(req)
                    self._add_running(req)
        # Decodes: plain-int bookkeeping, no per-request tensor ops (this runs every step for every stream).
        for req, slot in zip(decodes, decode_slots.tolist() if decode_slots is not None else []):
            gather_idx.append(len(positions))
            input_ids.append(0)  # placeholder, filled on the device
            positions.append(req.kv_len)
            req.kv_len += 1
            req.last_slot = slot
            fwd_reqs.append(req)
            fwd_seq_lens.append(req.kv_len)
            fwd_takes.append(1)
            sample_rows.append(len(fwd_reqs) - 1)
            sampled.append(req)
        chunks = [s for s in new_slots if s.numel()] + ([decode_slots] if decode_slots is not None else [])
        fb = ForwardBatch.build(
            mode,
            input_ids,
            positions,
            torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.int64),
            [r.row for r in fwd_reqs],  # type: ignore[misc]
            fwd_seq_lens,
            fwd_takes,
            self.runner.table.table,
            self.runner.device,
        )
        if gather_idx:
            fb.set_gather(gather_idx, [r.row for r in decodes], self.runner.device)
        sampling = self._sampling_batch(sampled) if sampled else None
        for r in sampled:
            r.pending += 1
        epochs = [r.epoch for r in sampled]
        return ScheduledBatch(mode, reqs + decodes, sampled, epochs, sample_rows, prefix_done, fb, sampling)

    def _add_running(self, req: Req) -> None:
        """Running requests stay in lexicographic order of their KV slots (a depth-first walk of the prefix
        cache), so requests sharing a cached prefix sit side by side in every decode batch. The attention
        kernel's blocks for them then run together and read the shared prefix's KV from DRAM once and from L2
        after that, instead of once per request (docs/BENCHMARKS.md, shared-prefix workload)."""
        bisect.insort(self.running, req, key=self.kv.slots_of)

    def _build_decode(self, reqs: list[Req], slots: torch.Tensor) -> ScheduledBatch:
        """A pure decode step: one new position per request, inputs read on the device. The per-step path at
        high concurrency, so per-request work is a few list comprehensions over plain ints."""
        positions = [r.kv_len for r in reqs]
        for r, slot in zip(reqs, slots.tolist()):
            r.kv_len += 1
            r.last_slot = slot
        n = len(reqs)
        fb = ForwardBatch.build(
            ForwardMode.DECODE,
            None,
            positions,
            slots,
            [r.row for r in reqs],  # type: ignore[misc]
            [p + 1 for p in positions],
            [1] * n,
            self.runner.table.table,
            self.runner.device,
        )
        if self.cascade:
            fb.cascade = self._cascade_groups(reqs)
            self.counters.cascade_steps += fb.cascade is not None
        sampling = self._sampling_batch(reqs)
        for r in reqs:
            r.pending += 1
        epochs = [r.epoch for r in reqs]
        return ScheduledBatch(ForwardMode.DECODE, reqs, reqs, epochs, list(range(n)), [], fb, sampling)

    def _cascade_groups(self, reqs: list[Req]) -> CascadeBatch | None:
        """The decode batch's cascade groups on the device, or None when they would save too little. Shared
        prefixes change only when the batch's requests or some request's cached slots do (KVManager.version), so
        the groups and their device tensors are reused across the steps in between."""
        memo = self._cascade_memo
        if memo is not None and memo[0] == self.kv.version and memo[1] == reqs:
            return memo[2]
        groups = find_groups([self.kv.slots_of(r) for r in reqs], [r.cached_len for r in reqs])
        cascade = None
        if groups is not None and groups.saved_keys >= MIN_SAVED_KEYS:
            cascade = groups.to_device(self.runner.device)
        self._cascade_memo = (self.kv.version, reqs, cascade)
        return cascade

    def _sampling_batch(self, reqs: list[Req]) -> SamplingBatch:
        if all(len(r.output_ids) + r.pending >= r.plain_sampling_from for r in reqs):
            return SamplingBatch.plain_greedy(len(reqs), self.vocab_size)
        rows = [
            SamplerRow(
                params=r.params,
                seed=r.seed,
                step=len(r.output_ids) + r.pending,
                prompt_ids=r.input_ids,
                output_ids=r.output_ids,
                eos_ids=r.eos_ids,
            )
            for r in reqs
        ]
        return SamplingBatch.build(rows, self.vocab_size, self.runner.device)

    # -- results ---------------------------------------------------------------------------------------
    def _process(self, batch: ScheduledBatch, result: StepResult) -> None:
        for job in batch.prefix_done:
            if job.row is not None:  # not aborted meanwhile
                self._share_prefix(job)
        tokens = result.next_token_ids
        has_logprobs = result.logprobs is not None
        appended = 0
        for j, (req, epoch) in enumerate(zip(batch.sampled, batch.epochs)):
            if req.epoch != epoch:
                continue  # retracted or finished since this step was built: its token is dropped
            req.pending -= 1
            appended += 1
            tok = tokens[j]
            req.output_ids.append(tok)
            if has_logprobs and req.logprobs is not None:
                self._append_logprob(req, result, j, tok)
            reason = self._stop_reason(req, tok)
            if reason is not None:
                self._finish(req, reason)
            else:
                req.group.queue.put_nowait(make_output(req))
        self.counters.generation_tokens += appended

    def _share_prefix(self, job: Req) -> None:
        group = job.group
        shared = SharedPrefix(holder=job, length=job.kv_len, refs=len(group.reqs))
        for child in reversed(group.reqs):
            child.shared = shared
            self.waiting.appendleft(child)

    def _append_logprob(self, req: Req, result: StepResult, j: int, tok: int) -> None:
        assert req.logprobs is not None and result.logprobs is not None
        top: list[tuple[int, float]] = []
        if req.params.top_logprobs and result.top_logprob_ids is not None and result.top_logprob_vals:
            k = req.params.top_logprobs
            top = list(zip(result.top_logprob_ids[j][:k], result.top_logprob_vals[j][:k]))
        req.logprobs.append(TokenLogprob(tok, result.logprobs[j], top))

    def _stop_reason(self, req: Req, tok: int) -> FinishReason | None:
        """Why req ends after appending tok, if it does. Runs for every stream every step: the common
        request (no stop strings, stop ids a precomputed set) costs a set lookup, a detokenizer push and a
        length compare."""
        n_out = len(req.output_ids)
        if tok in req.stop_ids and n_out >= req.params.min_new_tokens:
            return FinishReason("stop", matched=tok)
        assert req.detok is not None
        delta = req.detok.push_one(tok)
        if delta:
            prev = len(req.text)
            req.text += delta
            matcher = req.stop_matcher
            if matcher is not None and n_out >= req.params.min_new_tokens:
                hit = matcher.find(req.text, prev)
                if hit is not None:
                    req.text = req.text[: hit[0]]
                    return FinishReason("stop", matched=hit[1])
        if n_out >= req.max_output:
            return FinishReason("length")
        return None

    def _emit(self, req: Req) -> None:
        req.group.queue.put_nowait(make_output(req))

    def _finish(self, req: Req, reason: FinishReason, kv_valid: bool = True) -> None:
        if req.state is ReqState.FINISHED:
            return
        if req.state is ReqState.RUNNING:
            self.running.remove(req)
            self.penalized.discard(req)
        if reason.type != "stop" or not isinstance(reason.matched, str):
            assert req.detok is not None
            req.text += req.detok.finish()
        self.kv.release(req, kv_valid)
        if req.shared is not None:
            self.kv.drop_shared(req.shared)
        req.epoch += 1  # a step still in flight for it is ignored
        req.pending = 0
        req.state = ReqState.FINISHED
        req.finish_reason = reason
        self.counters.finished += 1
        group = req.group
        group.num_finished += 1
        self._emit(req)
        if group.finished:
            self.groups.pop(group.rid, None)

    # -- aborts and failures ---------------------------------------------------------------------------
    def _apply_aborts(self) -> None:
        for rid, message in list(self.pending_aborts.items()):
            group = self.groups.get(rid)
            if group is not None:
                self._abort_group(group, message)
        self.pending_aborts.clear()

    def _abort_group(self, group: RequestGroup, message: str, kv_valid: bool = True) -> None:
        group.aborted = True
        if self.chunked is not None and self.chunked.group is group:
            self.chunked = None
        job = group.prefix_job
        for req in ([job] if job else []) + group.reqs:
            if req in self.waiting:
                self.waiting.remove(req)
        if job is not None and not any(r.shared for r in group.reqs):
            self.kv.release(
                job, kv_valid
            )  # its samples never started; once they have, the last one releases it
        for req in group.reqs:
            self._finish(req, FinishReason("abort", message=message), kv_valid)

    def fail_all(self, message: str) -> None:
        """Finish every request with an error (the engine cannot continue, e.g. a tensor-parallel rank died)."""
        for group in list(self.groups.values()):
            self._abort_group(group, message, kv_valid=False)

    def _fail_batch(self, batch: ScheduledBatch, message: str) -> None:
        for req in batch.reqs:
            if req.group.rid in self.groups:
                self._abort_group(req.group, message, kv_valid=False)  # its K/V may be garbage: cache none


def _prompt_head(req: Req) -> tuple[int, ...] | None:
    """The first prompt tokens another request could share (None: too short, or the prompt is shared anyway)."""
    if req.shared is not None or req.is_prefix_job or len(req.input_ids) <= _SHARED_HEAD:
        return None
    return tuple(req.input_ids[:_SHARED_HEAD])


def _uncached_head(req: Req) -> tuple[int, ...] | None:
    """A continued chunk's prompt head when its start was not cached (it is computing that head)."""
    return _prompt_head(req) if req.cached_len < _SHARED_HEAD else None


def _uses_penalties(req: Req) -> bool:
    p = req.params
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
