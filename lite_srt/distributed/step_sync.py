"""The per-step message from rank 0 to the worker ranks: a fixed int64 header, then one int64 payload.

Rank 0 sends it on its forward thread just before running the step; every worker rebuilds the same
ForwardBatch from it, applies the req->token table writes the scheduler made since the previous step, and runs
the same forward. Only tensors cross (gloo broadcasts on the CPU group); no Python object is pickled.

Payload, in order: input_ids [T] (extend steps only), positions [T], out_cache_loc [T], req_pool_indices [B],
seq_lens [B], extend_lens [B], gather_idx [G], gather_rows [G], table writes rows/cols/slots [W] each,
sample_rows [S].
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lite_srt.distributed.group import TPGroup
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode


class Op(enum.IntEnum):
    STEP = 1
    STOP = 2


_MODES = (ForwardMode.EXTEND, ForwardMode.DECODE)
_HEADER = 8  # op, mode, T, B, has_ids, G, W, S


@dataclass
class TableWrites:
    """table[rows[i], cols[i]] = slots[i]: what the scheduler wrote into rank 0's table (CPU int64)."""

    rows: torch.Tensor
    cols: torch.Tensor
    slots: torch.Tensor

    @classmethod
    def empty(cls) -> TableWrites:
        e = torch.empty(0, dtype=torch.int64)
        return cls(e, e, e)

    def __len__(self) -> int:
        return int(self.rows.numel())


@dataclass
class StepMessage:
    batch: ForwardBatch
    sample_rows: list[int]


def send_step(tp: TPGroup, batch: ForwardBatch, sample_rows: list[int], writes: TableWrites) -> None:
    host = batch.host
    if host is None:
        raise RuntimeError("a ForwardBatch sent to tensor-parallel workers must keep its host tensors")
    gather_idx, gather_rows = _host_gather(batch)
    ids = [] if host.input_ids is None else [host.input_ids]
    parts = [
        *ids,
        host.positions,
        host.out_cache_loc,
        host.req_pool_indices,
        host.seq_lens,
        host.extend_lens,
        gather_idx,
        gather_rows,
        writes.rows,
        writes.cols,
        writes.slots,
        torch.tensor(sample_rows, dtype=torch.int64),
    ]
    header = [
        Op.STEP,
        _MODES.index(batch.mode),
        int(host.positions.numel()),
        int(host.req_pool_indices.numel()),
        int(bool(ids)),
        int(gather_idx.numel()),
        len(writes),
        len(sample_rows),
    ]
    _bcast(tp, torch.tensor(header, dtype=torch.int64))
    _bcast(tp, torch.cat([p.to(torch.int64).reshape(-1) for p in parts]))


def send_stop(tp: TPGroup) -> None:
    _bcast(tp, torch.tensor([Op.STOP] + [0] * (_HEADER - 1), dtype=torch.int64))


def recv_step(
    tp: TPGroup, req_to_token: torch.Tensor, device: torch.device
) -> tuple[StepMessage, TableWrites] | None:
    """The next step from rank 0 (None: stop). The caller applies the writes before running the batch."""
    header = _bcast(tp, torch.empty(_HEADER, dtype=torch.int64)).tolist()
    op, mode, t, b, has_ids, g, w, s = header
    if op == Op.STOP:
        return None
    sizes = [t * has_ids, t, t, b, b, b, g, g, w, w, w, s]
    payload = _bcast(tp, torch.empty(sum(sizes), dtype=torch.int64))
    (ids, pos, loc, rpi, seq, ext, gidx, grows, wr, wc, ws, rows) = torch.split(payload, sizes)
    batch = ForwardBatch.from_host(
        _MODES[mode], ids if has_ids else None, pos, loc, rpi, seq, ext, req_to_token, device
    )
    if g:
        batch.set_gather(gidx, grows, device)
    return StepMessage(batch, rows.tolist()), TableWrites(wr, wc, ws)


def _host_gather(batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixed-batch gather as CPU tensors (ForwardBatch.set_gather keeps them: no device sync here)."""
    host = batch.host
    if host is None or host.gather_idx is None or host.gather_rows is None:
        e = torch.empty(0, dtype=torch.int64)
        return e, e
    return host.gather_idx, host.gather_rows


def _bcast(tp: TPGroup, t: torch.Tensor) -> torch.Tensor:
    dist.broadcast(t, src=0, group=tp.cpu_group)
    return t
