"""ModelRunner: loads the model, owns the KV pool buffers and the req->token table, runs forward + sample.

Ownership: constructed on the event-loop thread; afterwards `launch()` (and `step()`) run only on the forward
thread (the GPU thread on a GPU machine), one batch at a time. A launched step's `PendingStep.result()` runs on
the engine's wait thread and touches only that step's host copies. Under tensor parallelism every rank has a
runner holding its shard: rank 0's `launch()` first sends the step to the workers (step_sync), which run
`follow()` in lockstep, and after sampling broadcasts the sampled tokens so every rank's token table stays the
same. The scheduler (event loop) owns all bookkeeping (allocator, prefix cache, table rows); the forward thread
touches only the tensors of the batch it was handed and the contents of the KV buffers and table rows that batch
names.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from lite_srt import kernels
from lite_srt.config import ServerArgs
from lite_srt.distributed.group import TPGroup
from lite_srt.distributed.step_sync import TableWrites, send_step
from lite_srt.engine.cuda_graph import CudaGraphRunner
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode, list_to_device
from lite_srt.engine.fused_decode import TIMING_KEYS, FusedDecodeChoice, FusedDecodeStep
from lite_srt.engine.fused_decode import choose as choose_fused_decode
from lite_srt.engine.gemv_tuning import OneRowChoice, tune_one_row_linear
from lite_srt.engine.sampler import SampleOutput, SamplingBatch, sample
from lite_srt.loader import iter_weight_sources, resolve_load_format
from lite_srt.loader.model_config import ModelConfig
from lite_srt.mem.kv_pool import KVPool
from lite_srt.mem.req_table import ReqToTokenTable
from lite_srt.models.registry import model_class
from lite_srt.models.weights import init_dummy_weights

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Without --max-total-tokens, a CPU engine gives the KV pool this many bytes.
_CPU_KV_BYTES = 2 << 30
_GPU_MEM_FRACTION = 0.85


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """A host copy of t that may still be in flight (pinned memory, non-blocking) when t is on a GPU."""
    if t is None or t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


@dataclass
class StepResult:
    """What one forward step returns to the scheduler, already on the CPU."""

    next_token_ids: list[int]  # one per sampled row
    logprobs: list[float] | None
    top_logprob_ids: list[list[int]] | None
    top_logprob_vals: list[list[float]] | None
    forward_s: float


@dataclass
class PendingStep:
    """A launched step: its sampled outputs in host memory, valid once `event` (None on the CPU) completes."""

    out: SampleOutput | None
    event: torch.cuda.Event | None
    t0: float

    def result(self) -> StepResult:
        """Wait for the step (releasing the GIL while the GPU works) and return its outputs as lists."""
        if self.event is not None:
            self.event.synchronize()
        forward_s = time.perf_counter() - self.t0
        out = self.out
        if out is None:
            return StepResult([], None, None, None, forward_s)
        return StepResult(
            next_token_ids=out.next_token_ids.tolist(),
            logprobs=out.logprobs.tolist() if out.logprobs is not None else None,
            top_logprob_ids=out.top_logprob_ids.tolist() if out.top_logprob_ids is not None else None,
            top_logprob_vals=out.top_logprob_vals.tolist() if out.top_logprob_vals is not None else None,
            forward_s=forward_s,
        )


def resolve_dtype(args: ServerArgs, cfg: ModelConfig, device: str) -> torch.dtype:
    if args.dtype != "auto":
        return _DTYPES[args.dtype]
    if device == "cpu":
        return torch.float32  # CPU matmuls in half precision are slow and inexact
    return _DTYPES.get(cfg.torch_dtype, torch.bfloat16) if cfg.torch_dtype != "float32" else torch.bfloat16


class ModelRunner:
    def __init__(
        self,
        args: ServerArgs,
        cfg: ModelConfig,
        model_path: str,
        context_length: int,
        tp: TPGroup | None = None,
    ) -> None:
        self.args = args
        self.tp = tp or TPGroup.single()
        self.device = torch.device(args.resolved_device)
        self.dtype = resolve_dtype(args, cfg, self.device.type)
        if context_length > cfg.max_position_embeddings:
            cfg = dataclasses.replace(cfg, max_position_embeddings=context_length)
        self.cfg = cfg
        self.context_length = context_length
        self.chunked_prefill_size = args.chunked_prefill_size or _default_chunk(self.device)
        self.model = self._load_model(model_path)
        self.gemv_choice: OneRowChoice | None = None  # set with the CUDA graphs (gemv_tuning.py)
        self.fused_choice: FusedDecodeChoice | None = None  # likewise (fused_decode.py)
        # Cascade decode (prefix_groups.py), unless turned off: it needs the CUDA kernel's tensor-core path
        # (fp16/bf16, NVIDIA) and one rank (tensor-parallel workers rebuild each batch from its host tensors, which
        # do not carry the groups). The scheduler and the graph capture both read this one flag.
        self.cascade_attention = (
            not args.disable_cascade_attention
            and self.device.type == "cuda"
            and torch.version.hip is None
            and self.tp.size == 1
            and self.dtype in (torch.float16, torch.bfloat16)
            and cfg.head_dim in (64, 128)
            and kernels.has_native("decode_attention_cascade", "cuda")
        )
        self.pdl = kernels.pdl_enabled(self.device)
        if self.device.type == "cuda":
            logger.info("programmatic dependent launch: %s", "on" if self.pdl else "off")
        try:
            self.pool = self._make_pool()
            self.max_running_requests = args.max_running_requests or default_max_running(self.pool.num_slots)
            # Extra rows beyond max_running_requests: a chunked prefill and shared n>1 prompts hold rows too.
            self.table = ReqToTokenTable(self.max_running_requests * 2 + 16, context_length + 1, self.device)
            if self.tp.size > 1 and self.tp.is_driver:
                self.table.enable_journal()
            # The last token sampled for each table row: decode steps read their inputs from here, so a step
            # can be built before the previous one's tokens reach the CPU (overlap scheduling).
            self.next_tokens = torch.zeros(self.table.max_reqs, dtype=torch.int64, device=self.device)
            self.graphs = self._capture_graphs()
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(
                f"out of GPU memory at startup ({e}). Lower --mem-fraction-static or --max-total-tokens to leave "
                "more room for activations, or lower --chunked-prefill-size / --cuda-graph-max-bs"
            ) from e

    def _load_model(self, model_path: str) -> torch.nn.Module:
        t0 = time.perf_counter()
        fmt = resolve_load_format(model_path, self.args.load_format)
        cls = model_class(self.cfg)
        with torch.device(self.device):
            prev = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)
            try:
                model = cls(self.cfg, self.tp)
            finally:
                torch.set_default_dtype(prev)
        if fmt == "dummy":
            init_dummy_weights(model, self.args.seed + 1000003 * self.tp.rank)
        else:
            model.load_weights(iter_weight_sources(model_path, fmt))
        model.eval()
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        logger.info(
            "loaded %s (%s, %.1f MB%s, %s on %s) in %.1f s",
            self.cfg.architecture,
            fmt,
            nbytes / 1e6,
            f" on this rank of {self.tp.size}" if self.tp.size > 1 else "",
            str(self.dtype).replace("torch.", ""),
            self.device,
            time.perf_counter() - t0,
        )
        return model

    def _kv_bytes_budget(self) -> int:
        """Bytes for the KV pool: on a GPU, the static fraction of memory less the weights (already loaded)
        and the activations of a prefill at the largest chunk (measured by running one)."""
        if self.device.type == "cpu":
            return _CPU_KV_BYTES
        activations = self._measure_prefill_activations()
        free, total = torch.cuda.mem_get_info(self.device)
        frac = self.args.mem_fraction_static or _GPU_MEM_FRACTION
        budget = int(total * frac) - (total - free) - activations
        logger.info(
            "GPU memory: %.1f GiB total, %.1f GiB in use after loading, %.2f GiB for prefill activations;"
            " KV pool gets %.1f GiB (--mem-fraction-static %.2f)",
            total / 2**30,
            (total - free) / 2**30,
            activations / 2**30,
            max(budget, 0) / 2**30,
            frac,
        )
        return max(budget, 0)

    @torch.inference_mode()
    def _measure_prefill_activations(self) -> int:
        """Peak memory of one forward over chunked_prefill_size tokens, beyond its (temporary) KV."""
        n = min(self.chunked_prefill_size, self.context_length)
        cfg = self.cfg
        pool = KVPool(cfg.num_hidden_layers, n, self.num_kv_heads, cfg.head_dim, self.dtype, self.device)
        table = ReqToTokenTable(1, n, self.device)
        slots = torch.arange(n, dtype=torch.int64)
        table.write(table.alloc(), 0, slots)  # type: ignore[arg-type]
        fb = ForwardBatch.build(
            ForwardMode.EXTEND, [0] * n, list(range(n)), slots, [0], [n], [n], table.table, self.device
        )
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.model(fb, pool)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        del pool, table, fb
        torch.cuda.empty_cache()
        return int(peak * 1.1) + (256 << 20)  # margin for allocator fragmentation and the sampler

    def _capture_graphs(self) -> CudaGraphRunner | None:
        if self.device.type != "cuda" or self.args.disable_cuda_graph:
            return None
        if not self.tp.graph_safe:
            # Replaying graphs that captured torch.distributed NCCL collectives hung on 2 H200s; without the
            # custom all-reduce (several machines, no peer access, or turned off) decode runs eagerly.
            logger.warning("CUDA graphs are off at tp %d without the custom all-reduce", self.tp.size)
            return None
        dummy_row = self.table.alloc()  # padded graph rows read through it; never handed to a request
        assert dummy_row is not None
        max_bs = min(
            self.args.cuda_graph_max_bs or _default_graph_max_bs(self.device), self.max_running_requests
        )
        if self.tp.custom_ar is not None:  # every captured all-reduce must fit its buffer
            max_bs = min(max_bs, self.tp.custom_ar.max_rows(self.cfg.hidden_size, self.dtype))
        runner = CudaGraphRunner(
            self.model,
            self.pool,
            self.table.table,
            dummy_row,
            max_bs,
            with_logits=self.tp.size == 1,
            cascade=self.cascade_attention,
        )
        # Before capture: the serving graphs keep whichever one-row linear path this picks. One rank only: under
        # tensor parallelism every timed step would be a collective, and ranks could pick differently.
        if self.tp.size == 1:
            self.gemv_choice = tune_one_row_linear(self.model, runner.time_decode_step)
        runner.fused = self._fused_decode(runner)
        runner.capture()
        return runner

    def _fused_decode(self, runner: CudaGraphRunner) -> FusedDecodeStep | None:
        """The fused batch-1 decode step where it applies and (unless forced) times faster than the unfused
        step with the GEMV choice just made."""
        fused = FusedDecodeStep.create(self.model, self.pool, self.tp.size, self.next_tokens)
        if fused is None:
            return None

        keys = min(TIMING_KEYS, self.context_length)

        def time_step(on: bool) -> float:
            runner.fused = fused if on else None
            return runner.time_decode_step(keys=keys)

        self.fused_choice = choose_fused_decode(time_step)
        return fused if self.fused_choice is None or self.fused_choice.fused else None

    def _make_pool(self) -> KVPool:
        cfg, page = self.cfg, self.args.page_size
        if self.args.max_total_tokens is not None:
            slots = -(-self.args.max_total_tokens // page) * page
        else:
            slots = KVPool.slots_for_bytes(
                self._kv_bytes_budget(),
                cfg.num_hidden_layers,
                self.num_kv_heads,
                cfg.head_dim,
                self.dtype,
                page,
            )
            slots = self.tp.min_int(slots)  # every rank's pool must hold the same slots
        if slots < page:
            raise RuntimeError(
                "no memory is left for the KV cache: raise --mem-fraction-static or set --max-total-tokens"
            )
        return KVPool(cfg.num_hidden_layers, slots, self.num_kv_heads, cfg.head_dim, self.dtype, self.device)

    def take_table_writes(self) -> TableWrites | None:
        """Rank 0: the table writes since the last step, for the workers to replay (None without parallelism).
        Called on the event-loop thread as a step is handed over, so it names exactly that step's writes."""
        return TableWrites(*self.table.drain_journal()) if self.tp.size > 1 else None

    @property
    def num_kv_heads(self) -> int:
        return self.model.num_local_kv_heads

    def step(
        self,
        batch: ForwardBatch,
        sample_rows: list[int],
        sampling: SamplingBatch | None,
        writes: TableWrites | None = None,
    ) -> StepResult:
        """Forward the batch and sample the rows in `sample_rows` (indices into the batch's requests), waiting
        for the sampled tokens. `launch` + `PendingStep.result` in one call.

        `writes`: the table writes since the previous step, for tensor-parallel workers (rank 0 only)."""
        return self.launch(batch, sample_rows, sampling, writes).result()

    @torch.inference_mode()
    def launch(
        self,
        batch: ForwardBatch,
        sample_rows: list[int],
        sampling: SamplingBatch | None,
        writes: TableWrites | None = None,
    ) -> PendingStep:
        """Enqueue the step's forward and sampling on the GPU and return without waiting for them. The sampled
        tokens land in the device token table (the next decode reads them there) and are copied to pinned host
        memory behind a CUDA event. The forward thread can therefore launch the next step while this one runs,
        so the GPU never waits for the CPU between steps; `PendingStep.result` (on another thread) waits."""
        t0 = time.perf_counter()
        if sampling is None:
            sample_rows = []
        if self.tp.size > 1:
            send_step(self.tp, batch, sample_rows, writes or TableWrites.empty())
        logits = self._forward(batch)
        if not sample_rows or sampling is None:
            return PendingStep(None, None, t0)
        token = self.graphs.fused_token if self.graphs is not None else None
        if token is not None and _plain_greedy(sampling) and sample_rows == [0]:
            # The fused kernel took the argmax and wrote it to next_tokens already (fused_decode.py).
            out = SampleOutput(token, None, None, None)
        else:
            idx = list_to_device(sample_rows, torch.int64, self.device)
            if len(sample_rows) != logits.shape[0]:
                logits = logits[idx]
            out = sample(logits, sampling)
            self.next_tokens[batch.req_pool_indices[idx]] = self.tp.broadcast(out.next_token_ids)
        host = SampleOutput(
            _to_host(out.next_token_ids),  # type: ignore[arg-type]
            _to_host(out.logprobs),
            _to_host(out.top_logprob_ids),
            _to_host(out.top_logprob_vals),
        )
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return PendingStep(host, event, t0)

    @torch.inference_mode()
    def follow(self, batch: ForwardBatch, sample_rows: list[int], writes: TableWrites) -> None:
        """A worker rank's half of rank 0's `step`: same table writes, same forward, rank 0's sampled tokens."""
        self.table.apply(writes.rows, writes.cols, writes.slots)
        self._forward(batch)
        if sample_rows:
            idx = list_to_device(sample_rows, torch.int64, self.device)
            tokens = self.tp.broadcast(torch.empty(len(sample_rows), dtype=torch.int64, device=self.device))
            self.next_tokens[batch.req_pool_indices[idx]] = tokens

    def _forward(self, batch: ForwardBatch) -> torch.Tensor:
        if batch.input_ids is None:
            batch.input_ids = self.next_tokens[batch.req_pool_indices]
        elif batch.gather_idx is not None:
            batch.input_ids[batch.gather_idx] = self.next_tokens[batch.gather_rows]
        if self.graphs is not None:
            if self.graphs.can_run(batch):
                return self.graphs.replay(batch)
            self.graphs.replayed_fused = False
        return self.model(batch, self.pool)


def _plain_greedy(sampling: SamplingBatch) -> bool:
    """Whether the batch's tokens are the raw logits' argmax (nothing adjusts them, no logprobs)."""
    return sampling.all_greedy and not sampling.adjusts_logits and not sampling.return_logprobs


def default_max_running(num_slots: int) -> int:
    """Streams decoding at once when --max-running-requests is not given: one per 1,024 pool slots, as SGLang
    sizes it from the pool rather than fixing it. At least 256 (the earlier fixed default, and what small pools
    keep), at most 1,024 (the event loop's per-step cost grows with the streams, and so do the table's rows).
    On an H200 with Llama-3.1-8B (818k slots) this gives 799: the shared-prefix benchmark's 512 requests decode
    in one wave instead of two (docs/BENCHMARKS.md)."""
    return max(256, min(1024, num_slots // 1024))


def _default_graph_max_bs(device: torch.device) -> int:
    """Graphs cost memory per captured size (decode activations: small; capture takes ~1 s per 30 sizes). The
    biggest GPUs (H200) capture up to 512 rows, so a 512-stream decode (e.g. many requests sharing a prefix, with
    cascade attention) does not fall back to eager launches, which measured host-bound there."""
    total = torch.cuda.get_device_properties(device).total_memory
    return 512 if total > 100 * 2**30 else 256 if total > 60 * 2**30 else 160 if total > 30 * 2**30 else 64


def _default_chunk(device: torch.device) -> int:
    """Large GPUs prefill faster in bigger chunks (H200, 8B, 8k-token prompts: +23% output tok/s at 8192 vs
    2048, docs/BENCHMARKS.md); the CPU and small GPUs keep activations small."""
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory > 60 * 2**30:
        return 8192
    return 2048
