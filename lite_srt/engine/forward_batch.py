"""ForwardBatch: the tensors one forward step needs, built by the scheduler on the event-loop thread.

Ownership: the scheduler builds it and hands it to the forward thread, which only reads it (and writes K/V into
the pool slots it names). Tokens of all requests are flattened: request b owns rows
[extend_start_loc[b], extend_start_loc[b] + extend_lens[b]) of input_ids/positions/out_cache_loc.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from lite_srt.engine.prefix_groups import CascadeBatch


def list_to_device(values: list, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A host list as a device tensor without waiting: torch.tensor(..., device=cuda) copies with a stream sync,
    which would wait for the step in flight (the next step is built, and launched, while it runs)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


@dataclass(frozen=True)
class MixedSplit:
    """A mixed batch cut in two: prefill chunks first, then `decodes` one-token rows (as the scheduler builds it).
    The extend kernel spends a 128-row query tile per row, so decode rows go to the decode kernel instead; these
    are the views each half needs, made once per step rather than once per layer."""

    prefill_tokens: int
    req_pool_indices: tuple[torch.Tensor, torch.Tensor]  # (prefill requests, decode requests)
    seq_lens: tuple[torch.Tensor, torch.Tensor]
    extend_lens: torch.Tensor  # prefill requests only
    extend_start_loc: torch.Tensor
    decode_keys: DecodeKeys | None = None  # of the decode rows


@dataclass(frozen=True)
class DecodeKeys:
    """Key counts of a step's decode rows, from the host's lengths: decode attention cuts a request of many more
    keys than the others into more key splits, so it does not set the step's length (csrc/attention/decode.cu,
    balanced_splits). `chunk` (captured graphs only): a [1] device tensor the kernel reads the step's keys per
    split from; the graph's grid was sized from `max` at capture."""

    total: int
    max: int
    chunk: torch.Tensor | None = None

    @classmethod
    def of(cls, seq_lens: torch.Tensor) -> DecodeKeys:
        return cls(int(seq_lens.sum()), int(seq_lens.max())) if seq_lens.numel() else cls(0, 0)


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill (possibly a chunk, possibly with a cached prefix)
    DECODE = "decode"  # one new token per request


@dataclass
class HostBatch:
    """The CPU int64 tensors a ForwardBatch was built from (tensor-parallel workers are sent these)."""

    input_ids: torch.Tensor | None
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    extend_lens: torch.Tensor
    gather_idx: torch.Tensor | None = None
    gather_rows: torch.Tensor | None = None
    host: HostBatch | None = None


@dataclass
class ForwardBatch:
    mode: ForwardMode
    input_ids: torch.Tensor | None  # [T] int64; None for decode: the runner gathers the last sampled tokens
    positions: torch.Tensor  # [T] int64
    out_cache_loc: torch.Tensor  # [T] int64: the slot each new token's K/V is written to
    req_pool_indices: torch.Tensor  # [B] int64: rows of the req->token table
    seq_lens: torch.Tensor  # [B] int64: tokens with K/V after this step (prefix + new)
    extend_lens: torch.Tensor  # [B] int64 (all 1 for decode)
    extend_start_loc: torch.Tensor  # [B] int64
    logits_indices: torch.Tensor  # [B] int64: the row of each request's last token
    req_to_token: torch.Tensor  # [R, max_context] int32, the whole table (the kernels index it)
    # Mixed batches: input_ids[gather_idx[i]] is the last token sampled for table row gather_rows[i].
    gather_idx: torch.Tensor | None = None
    gather_rows: torch.Tensor | None = None
    host: HostBatch | None = None
    # Decode rows (a decode step's, or a mixed step's decode half) sharing a prefix, attended once per group
    # (prefix_groups.py); None = plain decode.
    cascade: CascadeBatch | None = None
    # Mixed batches: the one-token decode rows (the last requests), attended by the decode kernel.
    mixed: MixedSplit | None = None
    # Decode steps: the rows' key counts, for balanced key splits (None: the kernel's one-wave plan alone).
    decode_keys: DecodeKeys | None = None

    @property
    def batch_size(self) -> int:
        return int(self.req_pool_indices.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def build(
        cls,
        mode: ForwardMode,
        input_ids: list[int] | None,
        positions: list[int],
        out_cache_loc: torch.Tensor,
        req_pool_indices: list[int],
        seq_lens: list[int],
        extend_lens: list[int],
        req_to_token: torch.Tensor,
        device: torch.device,
    ) -> ForwardBatch:
        return cls.from_host(
            mode,
            None if input_ids is None else _int64(input_ids),
            _int64(positions),
            out_cache_loc,
            _int64(req_pool_indices),
            _int64(seq_lens),
            _int64(extend_lens),
            req_to_token,
            device,
        )

    @classmethod
    def from_host(
        cls,
        mode: ForwardMode,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        out_cache_loc: torch.Tensor,
        req_pool_indices: torch.Tensor,
        seq_lens: torch.Tensor,
        extend_lens: torch.Tensor,
        req_to_token: torch.Tensor,
        device: torch.device,
    ) -> ForwardBatch:
        """From CPU int64 tensors (kept in `host`); the derived offsets are computed here."""
        start = torch.cumsum(extend_lens, 0) - extend_lens
        return cls(
            mode=mode,
            input_ids=None if input_ids is None else input_ids.to(device, non_blocking=True),
            positions=positions.to(device, non_blocking=True),
            out_cache_loc=out_cache_loc.contiguous().to(device, non_blocking=True),
            req_pool_indices=req_pool_indices.to(device, non_blocking=True),
            seq_lens=seq_lens.to(device, non_blocking=True),
            extend_lens=extend_lens.to(device, non_blocking=True),
            extend_start_loc=start.to(device, non_blocking=True),
            logits_indices=(start + extend_lens - 1).to(device, non_blocking=True),
            req_to_token=req_to_token,
            host=HostBatch(input_ids, positions, out_cache_loc, req_pool_indices, seq_lens, extend_lens),
            decode_keys=DecodeKeys.of(seq_lens) if mode is ForwardMode.DECODE else None,
        )

    def set_gather(
        self, idx: torch.Tensor | list[int], rows: torch.Tensor | list[int], device: torch.device
    ) -> None:
        """Mixed batches: input_ids[idx[i]] is read on the device from the token table's row rows[i]."""
        idx_t = idx if isinstance(idx, torch.Tensor) else _int64(idx)
        rows_t = rows if isinstance(rows, torch.Tensor) else _int64(rows)
        self.gather_idx = idx_t.to(device, non_blocking=True)
        self.gather_rows = rows_t.to(device, non_blocking=True)
        self.mixed = self._split(int(idx_t.numel()))
        if self.host is not None:
            self.host.gather_idx, self.host.gather_rows = idx_t, rows_t

    def _split(self, decodes: int) -> MixedSplit | None:
        """The gathered rows are the batch's decodes: its last `decodes` requests, one token each."""
        if decodes == 0:
            return None
        b = self.batch_size - decodes
        return MixedSplit(
            prefill_tokens=self.num_tokens - decodes,
            req_pool_indices=_split_views(self.req_pool_indices, b),
            seq_lens=_split_views(self.seq_lens, b),
            extend_lens=self.extend_lens[:b],
            extend_start_loc=self.extend_start_loc[:b],
            decode_keys=DecodeKeys.of(self.host.seq_lens[b:]) if self.host is not None else None,
        )


def _split_views(t: torch.Tensor, at: int) -> tuple[torch.Tensor, torch.Tensor]:
    return t[:at], t[at:]


def _int64(values: list[int]) -> torch.Tensor:
    # through numpy: several times faster than torch.tensor(list) for the hundreds of ints of a decode step
    return torch.from_numpy(np.asarray(values, dtype=np.int64))
