"""KVAllocator: which KV slots are free. CPU bookkeeping only; it never touches the KV buffers.

Allocation is page-granular. Slot s belongs to page s // page_size, and a request's position i always lands
at a slot with s % page_size == i % page_size: `alloc` first fills the rest of the page of the request's last
slot, then takes whole new pages. So a page never holds positions of two requests, and a page-aligned prefix
handed to the prefix cache owns whole pages.

Every usable slot is exactly one of: free (here), owned by a running request, or held by the prefix cache
(see accounting.check_pool_invariant). Ownership: the allocator lives on the event-loop thread (the
scheduler); the GPU/forward thread never calls it. No locks.
"""

from __future__ import annotations

import torch

_I64 = torch.int64


class KVAllocator:
    """Hands out whole pages of slots in [0, num_slots); the free pages are a tensor stack (no per-slot loops)."""

    def __init__(self, num_slots: int, page_size: int) -> None:
        if page_size < 1:
            raise ValueError(f"KVAllocator: page_size must be >= 1, got {page_size}")
        if num_slots < page_size or num_slots % page_size != 0:
            raise ValueError(
                f"KVAllocator: num_slots ({num_slots}) must be a positive multiple of page_size ({page_size})"
            )
        self.page_size = page_size
        self.num_slots = num_slots
        self.num_pages = num_slots // page_size
        self._page_offsets = torch.arange(page_size, dtype=_I64)
        self.reset()

    def reset(self) -> None:
        """Mark every page free (the caller guarantees nobody still holds slots)."""
        # Stored reversed so that popping from the top hands out low pages first on a fresh pool.
        self._free_pages = torch.arange(self.num_pages - 1, -1, -1, dtype=_I64)
        self._num_free = self.num_pages
        self._page_is_free = torch.ones(self.num_pages, dtype=torch.bool)

    @property
    def available_slots(self) -> int:
        return self._num_free * self.page_size

    @property
    def total_slots(self) -> int:
        return self.num_slots

    def alloc(self, n: int, last_slot: int = -1) -> torch.Tensor | None:
        """Slots (int64, CPU) for the next n positions of a request whose previous position is at last_slot.

        last_slot = -1 means a new request or a page-aligned start. The rest of last_slot's page is used first
        (the caller owns that page), then whole new pages. Returns None, allocating nothing, when there are
        not enough free pages.
        """
        if n < 0:
            raise ValueError(f"KVAllocator.alloc: n must be >= 0, got {n}")
        if last_slot < -1 or last_slot >= self.num_slots:
            raise ValueError(f"KVAllocator.alloc: last_slot {last_slot} is outside [-1, {self.num_slots})")
        in_page = 0 if last_slot < 0 else min(n, self.page_size - 1 - last_slot % self.page_size)
        head = torch.arange(last_slot + 1, last_slot + 1 + in_page, dtype=_I64)
        need_pages = -(-(n - in_page) // self.page_size)
        if need_pages > self._num_free:
            return None
        if need_pages == 0:
            return head
        top = self._num_free
        pages = self._free_pages[top - need_pages : top].flip(0)
        self._num_free -= need_pages
        self._page_is_free[pages] = False
        tail = (pages[:, None] * self.page_size + self._page_offsets).reshape(-1)[: n - in_page]
        return torch.cat((head, tail)) if in_page else tail

    def free(self, slots: torch.Tensor) -> None:
        """Free the pages the given slots cover.

        Callers pass all slots of the pages they own (or any subset that touches each page): a page is
        freed once even if several of its slots are passed. Freeing a page that is already free is a
        bookkeeping bug (it would be handed out twice) and raises RuntimeError.
        """
        if slots.numel() == 0:
            return
        slots = slots.to(device="cpu", dtype=_I64).reshape(-1)
        lo, hi = int(slots.min()), int(slots.max())
        if lo < 0 or hi >= self.num_slots:
            raise ValueError(f"KVAllocator.free: slot range [{lo}, {hi}] is outside [0, {self.num_slots})")
        pages = torch.unique(slots // self.page_size) if self.page_size > 1 else torch.unique(slots)
        if bool(self._page_is_free[pages].any()):
            bad = pages[self._page_is_free[pages]][:8].tolist()
            raise RuntimeError(f"KVAllocator.free: double free of page(s) {bad} (page_size {self.page_size})")
        k = pages.numel()
        self._free_pages[self._num_free : self._num_free + k] = pages
        self._num_free += k
        self._page_is_free[pages] = True

    def is_free(self, slots: torch.Tensor) -> torch.Tensor:
        """Bool tensor: whether each slot's page is currently free (for integrity checks and tests)."""
        slots = slots.to(device="cpu", dtype=_I64).reshape(-1)
        return self._page_is_free[slots // self.page_size]

    def __repr__(self) -> str:
        return f"KVAllocator(free={self.available_slots}/{self.num_slots} slots, page_size={self.page_size})"
