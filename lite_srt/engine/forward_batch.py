"""ForwardBatch: the tensors one forward step needs, built by the scheduler on the event-loop thread.

Ownership: the scheduler builds it and hands it to the forward thread, which only reads it (and writes K/V into
the pool slots it names). Tokens of all requests are flattened: request b owns rows
[extend_start_loc[b], extend_start_loc[b] + extend_lens[b]) of input_ids/positions/out_cache_loc.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill (possibly a chunk, possibly with a cached prefix)
    DECODE = "decode"  # one new token per request


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
        ext = torch.tensor(extend_lens, dtype=torch.int64)
        start = torch.cumsum(ext, 0) - ext
        return cls(
            mode=mode,
            input_ids=None if input_ids is None else torch.tensor(input_ids, dtype=torch.int64).to(device),
            positions=torch.tensor(positions, dtype=torch.int64).to(device, non_blocking=True),
            out_cache_loc=out_cache_loc.contiguous().to(device, non_blocking=True),
            req_pool_indices=torch.tensor(req_pool_indices, dtype=torch.int64).to(device, non_blocking=True),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64).to(device, non_blocking=True),
            extend_lens=ext.to(device, non_blocking=True),
            extend_start_loc=start.to(device, non_blocking=True),
            logits_indices=(start + ext - 1).to(device, non_blocking=True),
            req_to_token=req_to_token,
        )
