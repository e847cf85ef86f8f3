"""The prefix-cache interface the scheduler programs against, and its MatchResult type.

Implementations: RadixCache (radix_cache.py, prefix reuse), NaiveCache (naive_cache.py, no reuse, for A/B)
and CppRadixCache (radix_cache_cpp.py, the radix tree in C++). `create_prefix_cache` picks one.

Slot ownership: every slot the cache holds is a whole page it got from a request through `insert`; it gives
slots back to the allocator on `insert` (duplicates, unaligned tail), `evict` and `reset`. A request that
matched a prefix uses the cache's slots read-only and must `lock` the match while it runs.

Ownership of the object: the cache lives on the event-loop thread (the scheduler); the GPU/forward thread
never calls it. No locks.

The request life cycle against a cache:
    m = cache.match_prefix(tokens[:-1]); cache.lock(m.handle)
    slots = cat(m.slots, allocator.alloc(...))           # the request owns slots[m.length:]
    ... run ...
    cache.insert(tokens_with_kv, slots, owned_from=m.length); cache.unlock(m.handle)
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lite_srt.mem.allocator import KVAllocator


def _empty_slots() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


@dataclass
class MatchResult:
    """The longest cached prefix of a token sequence: `slots[i]` holds the KV of position i."""

    handle: Any = None  # opaque node to pass to lock/unlock
    slots: torch.Tensor = field(default_factory=_empty_slots)  # int64, CPU

    @property
    def length(self) -> int:
        return int(self.slots.numel())


class PrefixCache(abc.ABC):
    """A store of KV slots keyed by token prefixes, evictable in LRU order when not locked."""

    def __init__(self, allocator: KVAllocator, page_size: int) -> None:
        if page_size != allocator.page_size:
            raise ValueError(
                f"{type(self).__name__}: page_size {page_size} != allocator page_size {allocator.page_size}"
            )
        self.allocator = allocator
        self.page_size = page_size

    @abc.abstractmethod
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Longest cached prefix of token_ids, truncated to a multiple of page_size; touches its LRU time.

        Does not lock. The caller must never match the whole sequence it will run: the model needs at least
        one input token to produce logits, so pass `token_ids[:-1]` for a new request.
        """

    @abc.abstractmethod
    def lock(self, handle: Any) -> None:
        """Protect the matched node and its ancestors from eviction (reference counted)."""

    @abc.abstractmethod
    def unlock(self, handle: Any) -> None:
        """Undo one `lock(handle)`."""

    @abc.abstractmethod
    def insert(self, token_ids: Sequence[int], slots: torch.Tensor, owned_from: int) -> int:
        """Cache the page-aligned prefix of token_ids, whose KV lives at `slots` (same length).

        slots[:owned_from] came from this cache through a match the caller still holds locked;
        ownership of slots[owned_from:] passes to the cache: it keeps those it stores and frees the rest
        (positions already cached by another request, and the unaligned tail). Returns the cached length
        of token_ids after the insert. The caller then unlocks its old handle; a request that keeps
        running must re-match (and lock) to get the cache's slots for the positions whose slots were freed
        as duplicates, and must pass only a page-aligned prefix so its tail is not freed.
        """

    @abc.abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots (if possible) from unlocked leaves, least recently used first.

        Returns how many slots were freed.
        """

    @property
    @abc.abstractmethod
    def evictable_size(self) -> int:
        """Cached slots no running request has locked."""

    @property
    @abc.abstractmethod
    def protected_size(self) -> int:
        """Cached slots some running request has locked."""

    @property
    def size(self) -> int:
        """All cached slots."""
        return self.evictable_size + self.protected_size

    @property
    @abc.abstractmethod
    def num_nodes(self) -> int:
        """Tree nodes below the root (for tests and metrics)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Free every cached slot. Raises RuntimeError while anything is locked."""

    @abc.abstractmethod
    def check_integrity(self) -> None:
        """Recompute sizes and lock counts from the structure; raise RuntimeError with details on mismatch."""


def create_prefix_cache(
    allocator: KVAllocator, page_size: int, disable_radix_cache: bool, use_cpp: bool | None = None
) -> PrefixCache:
    """The cache ServerArgs asks for: NaiveCache when --disable-radix-cache, else a radix cache.

    use_cpp: True = the C++ tree (ImportError if lite_srt._C lacks it), False = the Python tree,
    None = the C++ tree when built (it is several times faster per call, see scripts/bench_radix.py).
    """
    if disable_radix_cache:
        from lite_srt.mem.naive_cache import NaiveCache

        return NaiveCache(allocator, page_size)
    if use_cpp is not False:
        try:
            from lite_srt.mem.radix_cache_cpp import CppRadixCache

            return CppRadixCache(allocator, page_size)
        except ImportError:
            if use_cpp:
                raise
    from lite_srt.mem.radix_cache import RadixCache

    return RadixCache(allocator, page_size)
