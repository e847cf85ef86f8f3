"""Pool accounting: every usable KV slot is exactly one of free, owned by a running request, or cached.

`check_pool_invariant` is what the scheduler runs when it goes idle and what tests run after draining:
a mismatch is a leak (or a double free) and raises with all the numbers. Ownership: call it on the
event-loop thread, which owns the allocator and the cache.
"""

from __future__ import annotations

from lite_srt.mem.allocator import KVAllocator
from lite_srt.mem.prefix_cache import PrefixCache


def owned_slots(num_positions: int, cached_len: int, page_size: int) -> int:
    """Slots a request owns: the whole pages holding its positions past the cache's (page-aligned) prefix.

    num_positions is how many positions have slots allocated (the KV written or about to be).
    """
    own = num_positions - cached_len
    return -(-own // page_size) * page_size if own > 0 else 0


def check_pool_invariant(allocator: KVAllocator, cache: PrefixCache, owned_slots: int) -> None:
    """Raise RuntimeError unless free + owned + cached == total (owned counts whole pages)."""
    free, cached, total = allocator.available_slots, cache.size, allocator.total_slots
    if free + owned_slots + cached != total:
        raise RuntimeError(
            f"KV pool accounting: free {free} + owned {owned_slots} + cached {cached} "
            f"= {free + owned_slots + cached} != total {total} "
            f"(diff {total - free - owned_slots - cached}; cache evictable {cache.evictable_size}, "
            f"protected {cache.protected_size}; page_size {allocator.page_size})"
        )
