"""KVManager: which KV slots each request holds, on top of the allocator, the req->token table and the prefix
cache. It answers: match a request's prefix, give it slots for new positions, and release them when it finishes
or is retracted (handing reusable KV to the prefix cache).

Ownership: event-loop thread only. Every slot is exactly one of free (allocator), cached (prefix cache), or owned
by a live request (positions [cached_len, kv_len) of a request with a table row); `check_invariant` verifies
free + owned + cached == total.
"""

from __future__ import annotations

import numpy as np
import torch

from lite_srt.engine.request import Req, SharedPrefix
from lite_srt.mem.accounting import check_pool_invariant, owned_slots
from lite_srt.mem.allocator import KVAllocator
from lite_srt.mem.naive_cache import NaiveCache
from lite_srt.mem.prefix_cache import PrefixCache, create_prefix_cache
from lite_srt.mem.req_table import ReqToTokenTable


class KVManager:
    def __init__(
        self, num_slots: int, page_size: int, table: ReqToTokenTable, disable_radix_cache: bool
    ) -> None:
        self.page_size = page_size
        self.allocator = KVAllocator(num_slots, page_size)
        self.cache: PrefixCache = create_prefix_cache(self.allocator, page_size, disable_radix_cache)
        self.table = table
        # CPU copy of each live request's slots, as plain ints: decode appends one per step, and a list append
        # is far cheaper than a tensor op (the table itself may live on the GPU).
        self._slots: dict[int, list[int]] = {}
        self._holders: set[Req] = set()  # requests with a table row
        # Bumped whenever some request's cached (shareable) slots change: admission, cache_prompt, release.
        # Decode appends leave it alone, so per-batch facts about shared prefixes can be reused until it moves.
        self.version = 0

    # -- capacity ---------------------------------------------------------------------------------------
    @property
    def total_slots(self) -> int:
        return self.allocator.total_slots

    def available(self) -> int:
        """Slots a new allocation can get: free now, or freed by evicting unlocked cache entries."""
        return self.allocator.available_slots + self.cache.evictable_size

    def slots_needed(self, req: Req, n: int) -> int:
        """Slots (whole pages) that `n` more positions of `req` take from the allocator."""
        p = self.page_size
        room = (-req.kv_len) % p  # free positions left in the request's last (own) page
        return -(-max(n - room, 0) // p) * p

    # -- admission --------------------------------------------------------------------------------------
    def assign(self, req: Req) -> bool:
        """Give a waiting request a table row and its reusable prefix (shared prompt or prefix-cache match).
        False when no table row is free."""
        row = self.table.alloc()
        if row is None:
            return False
        req.row = row
        self._holders.add(req)
        if req.shared is not None:
            slots = self.slot_tensor(req.shared.holder)[: req.shared.length]
        else:
            match = self.cache.match_prefix(req.fill_ids[:-1] if not req.is_prefix_job else req.fill_ids)
            self.cache.lock(match.handle)
            req.cache_handle = match.handle
            slots = match.slots
        self.table.write(row, 0, slots)
        self._slots[row] = slots.tolist()
        self.version += 1
        req.cached_len = req.kv_len = int(slots.numel())
        req.last_slot = int(slots[-1]) if slots.numel() else -1
        return True

    def slots_of(self, req: Req) -> list[int]:
        """The slots of req's KV positions [0, kv_len) (a host copy of its table row; do not modify)."""
        assert req.row is not None
        return self._slots[req.row]

    def extend(self, req: Req, n: int) -> torch.Tensor | None:
        """Slots for req's next n positions (evicting cache entries if needed); None if they do not fit."""
        slots = self.allocator.alloc(n, req.last_slot)
        if slots is None:
            self.cache.evict(self.slots_needed(req, n) - self.allocator.available_slots)
            slots = self.allocator.alloc(n, req.last_slot)
            if slots is None:
                return None
        assert req.row is not None
        self.table.write(req.row, req.kv_len, slots)
        self._slots[req.row].extend(slots.tolist())
        return slots

    def extend_decode(self, reqs: list[Req]) -> torch.Tensor:
        """One slot each for the next position of every request (the caller made room beforehand).

        Runs every step for every stream: the per-request columns go through numpy (building a tensor from a
        Python list costs several times more) and cross to torch without a copy."""
        n = len(reqs)
        last = np.fromiter([r.last_slot for r in reqs], np.int64, n)
        slots = self.allocator.alloc_next(last)
        if slots is None:
            self.cache.evict(sum(self.slots_needed(r, 1) for r in reqs) - self.allocator.available_slots)
            slots = self.allocator.alloc_next(last)
        if slots is None:
            raise RuntimeError("decode step has no KV slots; _make_room_for_decode must run first")
        rows = [r.row for r in reqs]
        cols = np.fromiter([r.kv_len for r in reqs], np.int64, n)
        # One copy for the batch, not one per request.
        self.table.write_many(torch.from_numpy(np.array(rows, dtype=np.int64)), torch.from_numpy(cols), slots)
        owned = self._slots
        for row, v in zip(rows, slots.tolist()):
            owned[row].append(v)
        return slots

    def unextend(self, req: Req, slots: torch.Tensor) -> None:
        """Undo the last `extend` (admission changed its mind before any K/V was written)."""
        assert req.row is not None
        owned = self._slots[req.row]
        del owned[len(owned) - slots.numel() :]
        if req.kv_len % self.page_size:  # the first slots share the request's partly used page: keep it
            slots = slots[self.page_size - req.kv_len % self.page_size :]
        if slots.numel():
            self.allocator.free(slots)

    def commit(self, req: Req, slots: torch.Tensor) -> None:
        """These slots now belong to req's next positions; the step that writes their K/V is built (it runs
        before any later step on the same stream, so later steps may read them)."""
        req.kv_len += int(slots.numel())
        req.last_slot = int(slots[-1])

    def cache_prompt(self, req: Req) -> None:
        """Hand req's prefilled positions to the prefix cache now, not when it finishes, so requests queued
        behind it (e.g. sharing a system prompt) match them at once. req keeps running on the cache's slots.

        Called when the step computing those positions is built: any request matching them runs in a later
        step on the same stream, after their K/V is written."""
        if isinstance(self.cache, NaiveCache) or req.shared is not None or req.row is None:
            return
        aligned = req.kv_len // self.page_size * self.page_size  # the unaligned tail stays the request's
        if aligned <= req.cached_len:
            return
        slots = self.slot_tensor(req)
        self.cache.insert(req.fill_ids[:aligned], slots[:aligned], owned_from=req.cached_len)
        match = self.cache.match_prefix(req.fill_ids[:aligned])
        if match.length != aligned:
            raise RuntimeError(f"prefix cache kept {match.length} of {aligned} inserted positions")
        self.cache.lock(match.handle)
        self.cache.unlock(req.cache_handle)
        req.cache_handle, req.cached_len = match.handle, aligned
        self.table.write(req.row, 0, match.slots)  # duplicates of older entries now point at those
        self._slots[req.row] = match.slots.tolist() + self._slots[req.row][aligned:]
        self.version += 1

    def slot_tensor(self, req: Req) -> torch.Tensor:
        assert req.row is not None
        # Through numpy: ~4x faster than torch.tensor(list) for the thousands of slots of a long prompt, on the
        # event loop at every prefill and release.
        return torch.from_numpy(np.array(self._slots[req.row], dtype=np.int64))

    # -- release ----------------------------------------------------------------------------------------
    def release(self, req: Req, kv_valid: bool = True) -> None:
        """Give back everything req holds. KV of known tokens goes to the prefix cache (which keeps what it can
        reuse); `kv_valid=False` (a failed step) caches nothing new. A sample of a shared prompt frees its own
        slots; the last one releases the shared prompt."""
        if req.row is None:
            return
        slots = self.slot_tensor(req)
        if req.shared is not None:
            self.allocator.free(slots[req.cached_len :])
        else:
            # Positions whose token is still in flight (overlap scheduling) are not cached.
            valid = min(req.kv_len, req.fill_len) if kv_valid else req.cached_len
            self.cache.insert(req.fill_ids[:valid], slots[:valid], owned_from=req.cached_len)
            self.cache.unlock(req.cache_handle)
            self._free_beyond(valid, slots)
        self.table.free(req.row)
        del self._slots[req.row]
        self.version += 1
        self._holders.discard(req)
        req.row, req.cache_handle, req.cached_len, req.kv_len, req.last_slot = None, None, 0, 0, -1

    def _free_beyond(self, valid: int, slots: torch.Tensor) -> None:
        """Free the slots past the cached positions. The page that also holds cached positions went to the
        cache's insert, which freed it as an unaligned tail."""
        extra = slots[valid:]
        if valid % self.page_size:
            extra = extra[self.page_size - valid % self.page_size :]
        if extra.numel():
            self.allocator.free(extra)

    def drop_shared(self, shared: SharedPrefix) -> None:
        """One sample no longer needs the shared prompt; the last one releases it."""
        shared.refs -= 1
        if shared.refs == 0:
            self.release(shared.holder)

    def owned_slots(self) -> int:
        """Slots held privately by live requests (whole pages from cached_len up to kv_len)."""
        return sum(owned_slots(r.kv_len, r.cached_len, self.page_size) for r in self._holders)

    def check_invariant(self) -> None:
        self.cache.check_integrity()
        check_pool_invariant(self.allocator, self.cache, self.owned_slots())

    def flush_cache(self) -> bool:
        if self._holders:
            return False
        self.cache.reset()
        return True
