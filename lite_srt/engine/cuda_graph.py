"""CUDA graphs for decode steps: capture the model's decode forward once per batch size, replay it.

Eager decode launches hundreds of small kernels per step, each costing ~10 us of CPU; a replayed graph costs
~1 us per node. Batches are padded up to the next captured size; padded rows read and write only the pool's
dummy slot, through a table row reserved for them.

With cascade attention (prefix_groups.py) each size from CASCADE_MIN_BS up is captured twice, the second time
with the cascade kernels reading groups from fixed-size buffers: unused groups have size 0 and exit at once, and
each shared split sizes itself from the group's device-side shared length, so one capture serves any grouping.

Sizes up to BALANCED_MAX_BS are also captured with balanced key splits (forward_batch.DecodeKeys): decode
attention's grid is sized for the longest context and each request takes one split per `chunk_keys` keys, read
from a device buffer. A replay takes that graph when the step's lengths call for more splits than the one-wave
plan (kernels.decode_split_plan), e.g. a few 8k-token requests among short ones; otherwise the plain graph.

Under tensor parallelism the graphs hold the model up to the final norm, with every all-reduce going through the
custom all-reduce (an ordinary kernel); the LM head and its NCCL all-gather of the vocabulary run eagerly after
the replay (`with_logits=False`).

With a fused decode step (fused_decode.py) batch size 1 also gets a graph of that one kernel, replayed instead of
the model's graph while the request's context fits it (FusedDecodeStep.max_keys). Its five scalar inputs sit in
one buffer, filled by one torch.cat per step instead of five copies: at batch 1 the host's launches before the
graph are GPU idle time on the step's critical path.

Ownership: built on the event-loop thread at startup (before serving), then used only by the forward thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from lite_srt import kernels
from lite_srt.engine.forward_batch import DecodeKeys, ForwardBatch, ForwardMode
from lite_srt.engine.fused_decode import FusedDecodeStep
from lite_srt.engine.prefix_groups import MAX_GROUP, CascadeBatch
from lite_srt.layers.attention import PagedAttention
from lite_srt.mem.kv_pool import KVPool

logger = logging.getLogger(__name__)

CASCADE_MIN_BS = 16  # smaller batches rarely hold groups worth the extra kernels
# Captured cascade graphs launch this many shared-key splits per (group, KV head) and read the step's count (what
# an eager launch would pick, kernels.cascade_shared_splits) from a device buffer; blocks past it leave at once.
# The best count runs from 1 (32 groups) to 4-8 (2-4 groups) on an H200 (docs/BENCHMARKS.md).
GRAPH_SHARED_SPLITS = 8
_ANY_SHARED = 1 << 30  # captured graphs take any shared length (the kernel reads the real one on the device)
# Balanced twins up to this size: 160-224 requests of 1-9k keys still gain from splitting their longest requests
# in two (csrc/attention/decode.cu, kBalanceWaves), and every size captured twice costs startup time.
BALANCED_MAX_BS = 256


def capture_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to max_bs."""
    sizes = [b for b in (1, 2, 4, 8) if b <= max_bs] + list(range(16, max_bs + 1, 8))
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


def attention_heads(model: torch.nn.Module) -> tuple[int, int]:
    """(query heads, KV heads) of the model's attention layers on this rank; (1, 1) for a model without any."""
    layer = next((m for m in model.modules() if isinstance(m, PagedAttention)), None)
    return (layer.num_heads, layer.num_kv_heads) if layer is not None else (1, 1)


@dataclass
class GraphInputs:
    """Static input buffers the captured graphs read; a replay copies the real batch into their prefix."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    ones: torch.Tensor
    arange: torch.Tensor
    shared_lens: torch.Tensor  # cascade buffers: rows' shared lengths, then group starts and sizes
    group_start: torch.Tensor
    group_size: torch.Tensor
    split_count: torch.Tensor  # [1]: the step's shared-key splits (<= GRAPH_SHARED_SPLITS)
    chunk_keys: torch.Tensor  # [1]: the step's keys per split, read by the balanced graphs
    _split_value: int = 1  # what split_count holds: rewritten only when a step's count differs
    _chunk_value: int = 1  # what chunk_keys holds

    @classmethod
    def allocate(cls, max_bs: int, device: torch.device, dummy_slot: int, dummy_row: int) -> GraphInputs:
        def full(v: int) -> torch.Tensor:
            return torch.full((max_bs,), v, dtype=torch.int64, device=device)

        return cls(
            input_ids=full(0),
            positions=full(0),
            out_cache_loc=full(dummy_slot),
            req_pool_indices=full(dummy_row),
            seq_lens=full(1),
            ones=full(1),
            arange=torch.arange(max_bs, dtype=torch.int64, device=device),
            shared_lens=full(0),
            group_start=full(0)[: max(1, max_bs // 2)],
            group_size=full(0)[: max(1, max_bs // 2)],
            split_count=full(1)[:1],
            chunk_keys=full(1)[:1],
        )

    def cascade(self, bs: int) -> CascadeBatch:
        """The cascade view of the buffers for a graph of bs rows (at most bs // 2 groups of >= 2 rows)."""
        g = bs // 2
        return CascadeBatch(
            self.shared_lens[:bs], self.group_start[:g], self.group_size[:g], _ANY_SHARED, MAX_GROUP,
            GRAPH_SHARED_SPLITS, self.split_count,
        )  # fmt: skip

    def load_cascade(self, c: CascadeBatch, bs: int, padded: int, splits: int) -> None:
        """Copies a step's groups and shared-key split count into the buffers; padded rows and unused groups are
        zeros."""
        g = c.group_start.shape[0]
        splits = min(splits, GRAPH_SHARED_SPLITS)
        if splits != self._split_value:
            self.split_count.fill_(splits)
            self._split_value = splits
        self.shared_lens[:bs].copy_(c.shared_lens, non_blocking=True)
        self.shared_lens[bs:padded].zero_()
        self.group_start[:g].copy_(c.group_start, non_blocking=True)
        self.group_size[:g].copy_(c.group_size, non_blocking=True)
        self.group_size[g : padded // 2].zero_()

    def load_chunk(self, chunk: int) -> None:
        if chunk != self._chunk_value:
            self.chunk_keys.fill_(chunk)
            self._chunk_value = chunk

    def batch(self, bs: int, req_to_token: torch.Tensor, balanced: bool = False) -> ForwardBatch:
        """The graph's batch; balanced: its decode attention sized for any context length (the table's width)
        and reading the step's keys per split from chunk_keys."""
        keys = DecodeKeys(0, int(req_to_token.shape[1]), self.chunk_keys) if balanced else None
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs],
            extend_lens=self.ones[:bs],
            extend_start_loc=self.arange[:bs],
            logits_indices=self.arange[:bs],
            req_to_token=req_to_token,
            decode_keys=keys,
        )


class CudaGraphRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        pool: KVPool,
        req_to_token: torch.Tensor,
        dummy_row: int,
        max_bs: int,
        with_logits: bool = True,
        cascade: bool = False,
        fused: FusedDecodeStep | None = None,
    ) -> None:
        self.model, self.pool, self.req_to_token = model, pool, req_to_token
        self.fused = fused  # batch size 1 through the fused kernel (set before capture; None: the model)
        self.fused_graph: torch.cuda.CUDAGraph | None = None
        self.fused_output: torch.Tensor | None = None
        # The fused graph's inputs: input_ids, positions, out_cache_loc, req_pool_indices, seq_lens.
        self.fused_inputs = torch.zeros(5, dtype=torch.int64, device=pool.device)
        self.replayed_fused = False  # whether the last replay was the fused graph (its token is then valid)
        self.fused_replays = 0  # replays of the fused graph (tests and A/B runs read it)
        self.with_logits = with_logits
        self.dummy_slot, self.dummy_row = pool.dummy_slot, dummy_row
        self.sizes = capture_batch_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        self.inputs = GraphInputs.allocate(self.max_bs, pool.device, self.dummy_slot, dummy_row)
        # (bs, cascade, balanced) -> graph and its output
        self.graphs: dict[tuple[int, bool, bool], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, bool, bool], torch.Tensor] = {}
        self.cascade = cascade
        self.heads = attention_heads(model)  # (q, kv) per rank: what the cascade's split count is sized by
        # The last (groups, max group, max shared) and the shared-key split count picked for them.
        self._splits: tuple[tuple[int, int, int], int] | None = None
        self.cascade_replays = 0  # replays of cascade graphs (tests and A/B runs read it)
        self.balanced_replays = 0  # replays of balanced-split graphs
        req_to_token[dummy_row].fill_(self.dummy_slot)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        mem_pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in reversed(self.sizes):  # largest first: smaller graphs reuse its memory pool
                for key in self._variants(bs):
                    fb = self.inputs.batch(bs, self.req_to_token, balanced=key[2])
                    fb.cascade = self.inputs.cascade(bs) if key[1] else None
                    for _ in range(2):  # warm-up: lazy initialisation must not happen inside capture
                        self._forward(fb)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=mem_pool, stream=stream):
                        self.outputs[key] = self._forward(fb)
                    self.graphs[key] = graph
            if self.fused is not None and self.sizes[0] == 1:
                fb = self._fused_batch()
                for _ in range(2):
                    self._forward(fb, fused=True)
                self.fused_graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.fused_graph, pool=mem_pool, stream=stream):
                    self.fused_output = self._forward(fb, fused=True)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        logger.info(
            "captured %d CUDA graphs for %d decode batch sizes (1..%d%s) in %.1f s",
            len(self.graphs),
            len(self.sizes),
            self.max_bs,
            f"; cascade from {CASCADE_MIN_BS}" if self.cascade else "",
            time.perf_counter() - t0,
        )

    def _fused_batch(self) -> ForwardBatch:
        fb = self.inputs.batch(1, self.req_to_token)
        x = self.fused_inputs
        fb.input_ids, fb.positions, fb.out_cache_loc, fb.req_pool_indices, fb.seq_lens = (
            x[i : i + 1] for i in range(5)
        )
        # Warm-up and capture write through the dummy row.
        x[2], x[3], x[4] = self.dummy_slot, self.dummy_row, 1
        return fb

    @property
    def fused_token(self) -> torch.Tensor | None:
        """[1] int64: the greedy token of the last replay, if it was the fused graph (else None)."""
        return self.fused.token if self.replayed_fused and self.fused is not None else None

    def _split_plan(self, bs: int, keys: DecodeKeys) -> tuple[int, int, int]:
        q_heads, kv_heads = self.heads
        return kernels.decode_split_plan(self.pool.device, q_heads, kv_heads, bs, keys.total, keys.max)

    def _variants(self, bs: int) -> list[tuple[int, bool, bool]]:
        """(bs, cascade, balanced) graphs to capture: the plain one, a cascade one, and a balanced one where a
        long context can take more splits than the one-wave plan gives."""
        keys = [(bs, False, False)]
        if self.cascade and bs >= CASCADE_MIN_BS:
            keys.append((bs, True, False))
        if bs <= BALANCED_MAX_BS:
            base, _, splits = self._split_plan(bs, DecodeKeys(0, int(self.req_to_token.shape[1])))
            if splits > base:
                keys.append((bs, False, True))
        return keys

    def _balanced(self, fb: ForwardBatch, padded: int) -> bool:
        """Whether the step needs the balanced graph; if so its keys per split go to the device buffer."""
        if fb.decode_keys is None or fb.cascade is not None or (padded, False, True) not in self.graphs:
            return False
        base, chunk, splits = self._split_plan(padded, fb.decode_keys)
        if splits <= base:
            return False
        self.inputs.load_chunk(chunk)
        return True

    @torch.inference_mode()
    def time_decode_step(self, bs: int = 1, replays: int = 20, keys: int = 1) -> float:
        """Milliseconds per replay of a decode graph at `bs` captured now, with the kernels as currently chosen
        (startup tuning, gemv_tuning.py), every row attending `keys` keys (the dummy row's, all at the dummy
        slot). The graph is dropped afterwards and the inputs are left as padding expects them."""
        fb = self.inputs.batch(bs, self.req_to_token)
        self.inputs.seq_lens[:bs].fill_(keys)
        self.inputs.positions[:bs].fill_(keys - 1)
        try:
            return self._time_graph(fb, bs, replays)
        finally:
            self.inputs.seq_lens[:bs].fill_(1)
            self.inputs.positions[:bs].zero_()

    def _time_graph(self, fb: ForwardBatch, bs: int, replays: int) -> float:
        fused = self.fused is not None and bs == 1
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(fb, fused)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._forward(fb, fused)
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / replays

    def _forward(self, fb: ForwardBatch, fused: bool = False) -> torch.Tensor:
        if fused:
            assert self.fused is not None
            return self.fused(fb)
        return self.model(fb, self.pool) if self.with_logits else self.model.final_hidden(fb, self.pool)

    def can_run(self, fb: ForwardBatch) -> bool:
        if fb.mode is not ForwardMode.DECODE or not 0 < fb.batch_size <= self.max_bs or not self.graphs:
            return False
        if fb.cascade is None:
            return True
        # Groups fit the buffers by construction (>= 2 rows each, <= MAX_GROUP rows).
        return (self._padded(fb.batch_size), True, False) in self.graphs and fb.cascade.max_group <= MAX_GROUP

    def _shared_splits(self, c: CascadeBatch) -> int:
        """The eager plan's shared-key split count for the step's groups; the scheduler reuses its groups while
        the batch is unchanged, so the last answer is kept."""
        key = (c.group_start.shape[0], c.max_group, c.max_shared)
        if self._splits is None or self._splits[0] != key:
            q_heads, kv_heads = self.heads
            self._splits = (key, kernels.cascade_shared_splits(self.pool.device, q_heads, kv_heads, *key))
        return self._splits[1]

    def use_fused(self, fb: ForwardBatch) -> bool:
        """Whether a step replays the fused graph: one request whose keys fit the kernel."""
        return (
            self.fused_graph is not None
            and fb.batch_size == 1
            and fb.cascade is None
            and fb.decode_keys is not None
            and fb.decode_keys.max <= self.fused.max_keys  # type: ignore[union-attr]
        )

    def _padded(self, bs: int) -> int:
        return next(s for s in self.sizes if s >= bs)

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        bs = fb.batch_size
        self.replayed_fused = self.use_fused(fb)
        if self.replayed_fused:
            self.fused_replays += 1
            torch.cat(
                [fb.input_ids, fb.positions, fb.out_cache_loc, fb.req_pool_indices, fb.seq_lens],  # type: ignore[list-item]
                out=self.fused_inputs,
            )
            self.fused_graph.replay()  # type: ignore[union-attr]
            return self.fused_output  # type: ignore[return-value]
        padded = self._padded(bs)
        inp = self.inputs
        inp.input_ids[:bs].copy_(fb.input_ids, non_blocking=True)
        inp.positions[:bs].copy_(fb.positions, non_blocking=True)
        inp.out_cache_loc[:bs].copy_(fb.out_cache_loc, non_blocking=True)
        inp.req_pool_indices[:bs].copy_(fb.req_pool_indices, non_blocking=True)
        inp.seq_lens[:bs].copy_(fb.seq_lens, non_blocking=True)
        if padded > bs:  # padded rows: one token at the dummy slot, through the dummy row
            inp.out_cache_loc[bs:padded].fill_(self.dummy_slot)
            inp.req_pool_indices[bs:padded].fill_(self.dummy_row)
            inp.seq_lens[bs:padded].fill_(1)
            inp.positions[bs:padded].zero_()
        cascade = fb.cascade is not None
        if fb.cascade is not None:
            c = fb.cascade
            inp.load_cascade(c, bs, padded, self._shared_splits(c))
            self.cascade_replays += 1
        balanced = self._balanced(fb, padded)
        self.balanced_replays += balanced
        key = (padded, cascade, balanced)
        self.graphs[key].replay()
        out = self.outputs[key][:bs]
        return out if self.with_logits else self.model.compute_logits(out)
