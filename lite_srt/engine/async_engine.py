"""AsyncEngine: the engine as it lives on one asyncio event loop (the HTTP server's, or the offline Engine's).

It owns the tokenizer, the model runner with its forward thread (which launches steps) and wait thread (which
waits for each step's sampled tokens, so the next step is launched before this one ends), and the scheduler
coroutine. `generate()`
validates a request synchronously (raising a LiteSrtError the caller can map to HTTP 4xx/5xx), queues it and
returns a RequestStream of RequestOutputs.

With --tp-size > 1 this process is rank 0: it spawns the worker ranks before loading its own shard, and a
watchdog thread reports a worker's death, which fails every request in flight and marks the engine dead
(`on_fatal` lets the server exit non-zero as well).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lite_srt.config import ServerArgs
from lite_srt.distributed import launch as tp_launch
from lite_srt.distributed.group import TPGroup
from lite_srt.distributed.step_sync import send_stop
from lite_srt.distributed.worker import limit_cpu_threads
from lite_srt.engine.forward_batch import ForwardBatch
from lite_srt.engine.io import EngineStats, FinishReason, GenerateRequest, RequestOutput
from lite_srt.engine.model_runner import ModelRunner, StepResult
from lite_srt.engine.profiler import ForwardProfiler
from lite_srt.engine.request import Req, RequestGroup, init_output_state
from lite_srt.engine.sampler import SamplingBatch
from lite_srt.engine.scheduler import Scheduler
from lite_srt.engine.token_ids import bad_token_id
from lite_srt.errors import (
    ContextLengthExceededError,
    EngineDeadError,
    InvalidRequestError,
    ModelLoadError,
    QueueFullError,
    TokenizerError,
)
from lite_srt.loader import load_model_config, resolve_load_format
from lite_srt.tokenizer.null_tokenizer import NullTokenizer
from lite_srt.tokenizer.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)
_SEED_BITS = 62  # per-request seeds stay positive in int64 arithmetic on the device


def _gil_switch_interval() -> float | None:
    """Seconds between forced GIL hand-offs while the forward thread shares the process with the event loop, or
    None to keep Python's (5 ms). The forward thread needs the GIL for a moment at each step's launch; with the
    event loop busy streaming hundreds of outputs, each of those moments can wait a whole interval. Measured on
    the shared-prefix run at 512 streams (H200, docs/BENCHMARKS.md session 7), 0.5 ms did not beat Python's 5 ms
    beyond the run-to-run spread, so Python's stays; LITE_SRT_SWITCH_INTERVAL_MS sets one for A/B runs."""
    ms = float(os.environ.get("LITE_SRT_SWITCH_INTERVAL_MS", "0"))
    return ms / 1e3 if ms > 0 else None


def resolve_model_path(args: ServerArgs) -> str:
    if args.model_path:
        return args.model_path
    from lite_srt.default_model import default_model_path

    return default_model_path()


class RequestStream:
    """Async iterator over one request's outputs (all n samples); closing it early aborts the request."""

    def __init__(self, engine: AsyncEngine, group: RequestGroup) -> None:
        self._engine = engine
        self._group = group
        self._finished = 0

    @property
    def rid(self) -> str:
        return self._group.rid

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished >= self._group.n:
            raise StopAsyncIteration
        out = await self._group.queue.get()
        if out.finished:
            self._finished += 1
        return out

    async def aclose(self) -> None:
        if self._finished < self._group.n:
            self._engine.abort(self._group.rid)


class AsyncEngine:
    def __init__(self, args: ServerArgs) -> None:
        self.args = args
        self.model_path = resolve_model_path(args)
        self.model_config = load_model_config(self.model_path)
        self.tokenizer: Tokenizer = self._load_tokenizer()
        self.context_length = args.context_length or self.model_config.max_position_embeddings
        self.workers: tp_launch.Workers | None = None
        self.on_fatal: Callable[[str], None] | None = None  # the server exits non-zero through it
        self._dead: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        tp = self._start_tensor_parallel() if args.tp_size > 1 else TPGroup.single()
        runner_args = args.replace(device=tp_launch.rank_device(args, 0)) if args.tp_size > 1 else args
        try:
            self.runner = ModelRunner(
                runner_args, self.model_config, self.model_path, self.context_length, tp
            )
        except BaseException:
            if self.workers is not None:
                self.workers.stop(timeout=0)
                tp_launch.leave_group()
            raise
        self.max_total_tokens = self.runner.pool.num_slots
        self.model_name = args.served_model_name or _name_from_path(self.model_path)
        self.eos_ids = frozenset(self.tokenizer.eos_token_ids) | frozenset(self.model_config.eos_token_ids)
        self._rng = random.Random(args.seed)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lite-srt-forward")
        self._waiter = ThreadPoolExecutor(
            1, thread_name_prefix="lite-srt-step-wait"
        )  # results in launch order
        self._profiler = ForwardProfiler()
        self.scheduler: Scheduler | None = None
        self._task: asyncio.Task | None = None
        logger.info(
            "KV cache: %d tokens (%s, page size %d), context length %d, up to %d running requests",
            self.max_total_tokens,
            self.runner.pool,
            args.page_size,
            self.context_length,
            self.runner.max_running_requests,
        )

    def _load_tokenizer(self) -> Tokenizer:
        path = self.args.tokenizer_path or self.model_path
        try:
            return load_tokenizer(path, self.args.chat_template)
        except (TokenizerError, ModelLoadError):
            if (
                self.args.tokenizer_path
                or resolve_load_format(self.model_path, self.args.load_format) != "dummy"
            ):
                raise
        logger.warning("no tokenizer for %s: token-id prompts only, outputs rendered as <id>", path)
        cfg = self.model_config
        return NullTokenizer(cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_ids)  # type: ignore[return-value]

    # -- tensor parallelism ----------------------------------------------------------------------------
    def _start_tensor_parallel(self) -> TPGroup:
        if self.args.node_rank != 0:
            raise InvalidRequestError(
                "only node 0 runs the engine; other nodes run workers", param="node_rank"
            )
        if tp_launch.group_active():
            raise RuntimeError(
                "one tensor-parallel engine per process: shut the other one down first (torch.distributed "
                "keeps one default process group per process)"
            )
        # Workers must resolve exactly what rank 0 did (default model, context length).
        args = self.args.replace(model_path=self.model_path, context_length=self.context_length)
        addr = tp_launch.init_addr(args)
        limit_cpu_threads(args)
        self.workers = tp_launch.start_workers(args, addr)
        self.workers.watch(self._on_worker_death)
        logger.info("tensor parallelism: %d ranks, rendezvous at %s", args.tp_size, addr)
        return tp_launch.join_group(args, 0, addr)

    def _on_worker_death(self, message: str) -> None:
        """From the watchdog thread. A dead rank leaves collectives that may never return: fail everything."""
        logger.error("%s; failing every request in flight", message)
        loop = self._loop
        if loop is None or self.scheduler is None:  # still starting up: a collective may be waiting on it
            os._exit(1)
        loop.call_soon_threadsafe(self._fail_all, message)

    def _fail_all(self, message: str) -> None:
        self._dead = message
        sched = self.scheduler
        if sched is not None:
            sched.fail_all(f"engine failure: {message}")
            sched.stop()
        if self.on_fatal is not None:
            self.on_fatal(message)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        interval = _gil_switch_interval()
        if interval is not None:
            sys.setswitchinterval(interval)
            logger.info("GIL switch interval: %.2f ms", interval * 1e3)

        async def run_step(fb: ForwardBatch, rows: list[int], sb: SamplingBatch | None) -> StepResult:
            # The forward thread only launches; another thread waits for the tokens, so the forward thread is
            # free to launch the next step (already built by the overlap scheduler) while this one runs.
            writes = self.runner.take_table_writes()
            pending = await loop.run_in_executor(self._executor, self.runner.launch, fb, rows, sb, writes)
            return await loop.run_in_executor(self._waiter, pending.result)

        self.scheduler = Scheduler(
            self.args, self.runner, run_step, self.context_length, self.model_config.vocab_size
        )
        self._task = loop.create_task(self.scheduler.run_forever(), name="lite-srt-scheduler")
        self._task.add_done_callback(self._on_scheduler_exit)

    def _on_scheduler_exit(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("scheduler crashed", exc_info=task.exception())

    async def shutdown(self) -> None:
        sched = self.scheduler
        if sched is None:
            return
        for rid in list(sched.groups):
            sched.abort(rid, "the server is shutting down")
        await asyncio.sleep(0)  # let the scheduler apply the aborts between steps
        while sched.groups and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        sched.stop()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=30)
        if self.workers is not None and self._dead is None:
            # after the last step on the same thread, so the workers see stop only once they ran everything
            await asyncio.get_running_loop().run_in_executor(self._executor, send_stop, self.runner.tp)
        self._executor.shutdown(wait=self._dead is None)  # a dead rank may hold the forward thread forever
        self._waiter.shutdown(wait=self._dead is None)
        if self.workers is not None:
            self.workers.stop()
            if self._dead is None:
                tp_launch.leave_group()
        self.scheduler = None

    # -- requests --------------------------------------------------------------------------------------
    def generate(self, req: GenerateRequest) -> RequestStream:
        sched = self._live_scheduler()
        ids = req.input_ids
        self._validate(ids)
        if self.args.max_queued_requests is not None and sched.num_waiting >= self.args.max_queued_requests:
            raise QueueFullError(f"the queue is full ({sched.num_waiting} requests waiting); retry later")
        rid = req.rid or uuid.uuid4().hex
        if rid in sched.groups:
            raise InvalidRequestError(f"request id {rid!r} is already in use", param="rid")
        params = req.sampling_params
        group = RequestGroup(rid, params.n)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(_SEED_BITS)
        for i in range(params.n):
            r = Req(
                rid=rid,
                index=i,
                input_ids=ids,
                params=params,
                seed=(base_seed + i) % (1 << _SEED_BITS),
                group=group,
                eos_ids=self.eos_ids,
            )
            init_output_state(r, self.tokenizer)
            group.reqs.append(r)
        if params.max_new_tokens == 0:
            for r in group.reqs:  # nothing to generate: answer without touching the model
                r.finish_reason = FinishReason("length")
                r.state = r.state.FINISHED
                group.queue.put_nowait(_final_empty(r))
            return RequestStream(self, group)
        group.prefix_job = self._prefix_job(group, ids, params)
        sched.add_group(group, group.prefix_job)
        return RequestStream(self, group)

    def _prefix_job(self, group: RequestGroup, ids: list[int], params) -> Req | None:
        """For n > 1, a prefill-only request computes the page-aligned prompt KV that all samples share."""
        page = self.args.page_size
        shared = (len(ids) - 1) // page * page
        if params.n == 1 or shared == 0:
            return None
        return Req(
            rid=group.rid,
            index=-1,
            input_ids=ids[:shared],
            params=params,
            seed=0,
            group=group,
            eos_ids=self.eos_ids,
            is_prefix_job=True,
        )

    def _validate(self, ids: list[int]) -> None:
        if not ids:
            raise InvalidRequestError("the prompt is empty", param="input_ids")
        vocab = self.model_config.vocab_size
        if bad_token_id(ids, vocab) is not None:
            raise InvalidRequestError(f"input_ids must be integers in [0, {vocab})", param="input_ids")
        if len(ids) >= self.context_length:
            raise ContextLengthExceededError(
                f"the prompt has {len(ids)} tokens, but the context length is {self.context_length} "
                "(prompt plus at least one output token must fit)",
                param="input_ids",
            )
        if len(ids) + 1 > self.max_total_tokens:
            raise ContextLengthExceededError(
                f"the prompt has {len(ids)} tokens, but the KV cache holds {self.max_total_tokens}; "
                "raise --max-total-tokens",
                param="input_ids",
            )

    def abort(self, rid: str) -> bool:
        return self.scheduler.abort(rid) if self.scheduler is not None else False

    async def start_profile(self, output_dir: str | None = None) -> str:
        """Start tracing the forward thread; returns the directory the trace will go to. ValueError if a
        profile is already running or the directory cannot be created."""
        self._live_scheduler()
        if self._profiler.active:
            raise ValueError("a profile is already running; stop it first (POST /stop_profile)")
        out = output_dir or os.environ.get("LITE_SRT_PROFILE_DIR") or tempfile.gettempdir()
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the profile directory {out!r}: {e.strerror}") from e
        cuda = self.runner.device.type == "cuda"
        await asyncio.get_running_loop().run_in_executor(self._executor, self._profiler.start, out, cuda)
        return out

    async def stop_profile(self) -> str:
        """Stop tracing and write the trace; returns its path. ValueError if no profile is running."""
        if not self._profiler.active:
            raise ValueError("no profile is running; start one first (POST /start_profile)")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._profiler.stop)

    def _live_scheduler(self) -> Scheduler:
        if self._dead is not None:
            raise EngineDeadError(f"the engine failed: {self._dead}")
        if self.scheduler is None or self._task is None or self._task.done():
            raise EngineDeadError("the engine is not running")
        return self.scheduler

    async def flush_cache(self) -> bool:
        sched = self._live_scheduler()
        if sched.groups or sched.running or sched.waiting:
            return False
        return sched.kv.flush_cache()

    def stats(self) -> EngineStats:
        sched = self._live_scheduler()
        kv, c = sched.kv, sched.counters
        return EngineStats(
            num_running=len(sched.running),
            num_waiting=sched.num_waiting,
            kv_total_tokens=kv.total_slots,
            kv_used_tokens=kv.total_slots - kv.allocator.available_slots,
            kv_cached_tokens=kv.cache.size,
            prompt_tokens_total=c.prompt_tokens,
            generation_tokens_total=c.generation_tokens,
            cache_hit_tokens_total=c.cache_hit_tokens,
            num_retractions_total=c.retractions,
            num_finished_total=c.finished,
            cascade_steps_total=c.cascade_steps,
        )


def _final_empty(req: Req) -> RequestOutput:
    return RequestOutput(
        rid=req.rid,
        index=req.index,
        text="",
        delta_text="",
        delta_ids=[],
        all_logprobs=[] if req.logprobs is not None else None,
        delta_logprobs=[] if req.logprobs is not None else None,
        finished=True,
        finish_reason=req.finish_reason,
        prompt_tokens=len(req.input_ids),
        completion_tokens=0,
        cached_tokens=0,
    )


def _name_from_path(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return base[: -len(".gguf")] if base.endswith(".gguf") else base
