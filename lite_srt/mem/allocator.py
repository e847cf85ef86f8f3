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

import numpy as np
import torch


class KVAllocator:
    """Hands out whole pages of slots in [0, num_slots).

    The bookkeeping is numpy (a stack of free pages plus a per-page free flag): one op costs about a
    microsecond where a torch op costs several, and nothing loops over slots in Python. Slot ids cross the
    API as int64 CPU tensors that never alias the internal arrays.
    """

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
        self._page_offsets = np.arange(page_size, dtype=np.int64)
        self._stamp = np.zeros(self.num_pages, dtype=np.int64)  # scratch for sort-free dedup in free()
        self.reset()

    def reset(self) -> None:
        """Mark every page free (the caller guarantees nobody still holds slots)."""
        # Stored reversed so that popping from the top hands out low pages first on a fresh pool.
        self._free_pages = np.arange(self.num_pages - 1, -1, -1, dtype=np.int64)
        self._num_free = self.num_pages
        self._page_is_free = np.ones(self.num_pages, dtype=bool)

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
        p = self.page_size
        in_page = 0 if last_slot < 0 else min(n, p - 1 - last_slot % p)
        need_pages = -(-(n - in_page) // p)
        if need_pages > self._num_free:
            return None
        head = np.arange(last_slot + 1, last_slot + 1 + in_page, dtype=np.int64)
        if need_pages == 0:
            return torch.from_numpy(head)
        pages = self._take_pages(need_pages)
        tail = pages if p == 1 else (pages[:, None] * p + self._page_offsets).reshape(-1)[: n - in_page]
        return torch.from_numpy(np.concatenate((head, tail)) if in_page else tail)

    def alloc_next(self, last_slots: torch.Tensor | np.ndarray) -> torch.Tensor | None:
        """One slot each for the next position of many requests (a decode step), given their last slots.

        Same rule as alloc(1, last_slot) per request, in one vectorized call. None (allocating nothing)
        when there are not enough free pages for all of them. Takes a tensor or an int64 numpy array (the
        scheduler's decode path builds numpy, which is cheaper from Python ints).
        """
        if isinstance(last_slots, torch.Tensor):
            last = last_slots.detach().to(device="cpu", dtype=torch.int64).numpy().reshape(-1)
        else:
            last = np.asarray(last_slots, dtype=np.int64).reshape(-1)
        p = self.page_size
        if p == 1:  # every slot is its own page: all of them are new pages
            if last.size > self._num_free:
                return None
            return torch.from_numpy(self._take_pages(last.size))
        new_page = (last < 0) | (last % p == p - 1)
        need = int(new_page.sum())
        if need > self._num_free:
            return None
        out = last + 1
        if need:
            out[new_page] = self._take_pages(need) * p
        return torch.from_numpy(out)

    def _take_pages(self, k: int) -> np.ndarray:
        """Pop k free pages (a fresh array, safe to hand out)."""
        top = self._num_free
        pages = self._free_pages[top - k : top][::-1].copy()
        self._num_free -= k
        self._page_is_free[pages] = False
        return pages

    def free(self, slots: torch.Tensor) -> None:
        """Free the pages the given slots cover.

        Callers pass all slots of the pages they own (or any subset that touches each page): a page is
        freed once even if several of its slots are passed. Freeing a page that is already free is a
        bookkeeping bug (it would be handed out twice) and raises RuntimeError.
        """
        if slots.numel() == 0:
            return
        s = slots.detach().to(device="cpu", dtype=torch.int64).numpy().reshape(-1)
        lo, hi = int(s.min()), int(s.max())
        if lo < 0 or hi >= self.num_slots:
            raise ValueError(f"KVAllocator.free: slot range [{lo}, {hi}] is outside [0, {self.num_slots})")
        pages = s // self.page_size if self.page_size > 1 else s
        # Dedup without sorting: each page keeps the index of its last occurrence.
        idx = np.arange(pages.size, dtype=np.int64)
        self._stamp[pages] = idx
        pages = pages[self._stamp[pages] == idx]
        if self._page_is_free[pages].any():
            bad = pages[self._page_is_free[pages]][:8].tolist()
            raise RuntimeError(f"KVAllocator.free: double free of page(s) {bad} (page_size {self.page_size})")
        k = pages.size
        self._free_pages[self._num_free : self._num_free + k] = pages
        self._num_free += k
        self._page_is_free[pages] = True

    def is_free(self, slots: torch.Tensor) -> torch.Tensor:
        """Bool tensor: whether each slot's page is currently free (for integrity checks and tests)."""
        s = slots.detach().to(device="cpu", dtype=torch.int64).numpy().reshape(-1)
        return torch.from_numpy(self._page_is_free[s // self.page_size])

    def __repr__(self) -> str:
        return f"KVAllocator(free={self.available_slots}/{self.num_slots} slots, page_size={self.page_size})"
