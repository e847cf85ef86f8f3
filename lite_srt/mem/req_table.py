"""ReqToTokenTable: for each running request (a row), the KV slot of each of its positions.

Owns the `table` tensor (int32 [max_reqs, max_context_len], on the model's device) and the set of free
rows. Ownership: rows are allocated, freed and written on the event-loop thread (the scheduler); the
GPU/forward thread only reads the rows of the batch it was handed, which the scheduler does not rewrite
while that batch runs. No locks.

Under tensor parallelism rank 0's table also keeps a journal of its writes (event-loop thread only); each step
carries the writes made since the previous one to the workers, whose tables replay them (`apply`).
"""

from __future__ import annotations

import torch


class ReqToTokenTable:
    """Row allocator plus the request-position -> slot table the attention kernels index."""

    def __init__(self, max_reqs: int, max_context_len: int, device: str | torch.device) -> None:
        if max_reqs < 1 or max_context_len < 1:
            raise ValueError(
                f"ReqToTokenTable: max_reqs ({max_reqs}) and max_context_len ({max_context_len}) must be >= 1"
            )
        self.max_reqs = max_reqs
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.table = torch.zeros((max_reqs, max_context_len), dtype=torch.int32, device=self.device)
        # A Python stack: rows are few (hundreds) and taken one at a time.
        self._free_rows: list[int] = list(range(max_reqs - 1, -1, -1))
        self._row_is_free = [True] * max_reqs
        self._journal: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def enable_journal(self) -> None:
        self._journal = []

    def drain_journal(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, slots) int64 CPU tensors of every write since the last drain, in order."""
        if not self._journal:
            e = torch.empty(0, dtype=torch.int64)
            return e, e, e
        entries, self._journal = self._journal, []
        rows, cols, slots = zip(*entries)
        return torch.cat(rows), torch.cat(cols), torch.cat(slots)

    def apply(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """Replay another table's writes in order (a tensor-parallel worker mirroring rank 0)."""
        if not rows.numel():
            return
        # A scatter with repeated indices keeps an arbitrary one: keep only the last write of each entry.
        key = rows * self.max_context_len + cols
        uniq, inverse = torch.unique(key, return_inverse=True)
        if uniq.numel() != key.numel():
            order = torch.arange(key.numel())
            last = torch.full((uniq.numel(),), -1, dtype=torch.int64).scatter_reduce_(
                0, inverse, order, "amax"
            )
            rows, cols, slots = rows[last], cols[last], slots[last]
        dev = self.device
        # non_blocking: a blocking host->device copy waits for the whole stream, i.e. for the step in flight
        self.table[rows.to(dev, non_blocking=True), cols.to(dev, non_blocking=True)] = slots.to(
            device=dev, dtype=torch.int32, non_blocking=True
        )

    @property
    def available(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        """A free row, or None when every row is taken."""
        if not self._free_rows:
            return None
        row = self._free_rows.pop()
        self._row_is_free[row] = False
        return row

    def free(self, row: int) -> None:
        self._check_row(row, "free")
        self._row_is_free[row] = True
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        """table[row, start : start + len(slots)] = slots."""
        self._check_row(row, "write")
        end = start + slots.numel()
        self._check_range(start, end, "write")
        self.table[row, start:end] = slots.to(device=self.device, dtype=torch.int32, non_blocking=True)
        if self._journal is not None:
            n = end - start
            cols = torch.arange(start, end, dtype=torch.int64)
            self._journal.append(
                (torch.full((n,), row, dtype=torch.int64), cols, slots.to("cpu", torch.int64))
            )

    def write_many(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """table[rows[i], cols[i]] = slots[i] for all i, as one scatter (a decode step's new positions)."""
        if rows.numel() == 0:
            return
        if int(cols.max()) >= self.max_context_len or int(cols.min()) < 0:
            raise IndexError(f"ReqToTokenTable.write_many: a column is outside [0, {self.max_context_len})")
        packed = torch.stack((rows, cols, slots.to(torch.int64)))
        if self._journal is not None:
            self._journal.append((packed[0], packed[1], packed[2]))
        packed = packed.to(self.device, non_blocking=True)
        self.table[packed[0], packed[1]] = packed[2].to(torch.int32)

    def read(self, row: int, start: int, end: int) -> torch.Tensor:
        """table[row, start:end] as int64."""
        self._check_row(row, "read")
        self._check_range(start, end, "read")
        return self.table[row, start:end].to(torch.int64)

    def reset(self) -> None:
        self._free_rows = list(range(self.max_reqs - 1, -1, -1))
        self._row_is_free = [True] * self.max_reqs

    def _check_row(self, row: int, op: str) -> None:
        if not 0 <= row < self.max_reqs:
            raise IndexError(f"ReqToTokenTable.{op}: row {row} is outside [0, {self.max_reqs})")
        if self._row_is_free[row]:
            raise RuntimeError(f"ReqToTokenTable.{op}: row {row} is not allocated")

    def _check_range(self, start: int, end: int, op: str) -> None:
        if not 0 <= start <= end <= self.max_context_len:
            raise IndexError(
                f"ReqToTokenTable.{op}: positions [{start}, {end}) are outside [0, {self.max_context_len})"
            )
