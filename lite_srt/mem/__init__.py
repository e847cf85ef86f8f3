"""KV memory: the pool of K/V buffers, the slot allocator, the request->token table and the prefix caches.

Everything here lives on the event-loop thread (the scheduler); the GPU/forward thread only reads/writes
the contents of the KV buffers and the table rows of the batch it was handed. No locks.
"""

from __future__ import annotations

from lite_srt.mem.accounting import check_pool_invariant, owned_slots
from lite_srt.mem.allocator import KVAllocator
from lite_srt.mem.kv_pool import KVPool
from lite_srt.mem.naive_cache import NaiveCache
from lite_srt.mem.prefix_cache import MatchResult, PrefixCache, create_prefix_cache
from lite_srt.mem.radix_cache import RadixCache
from lite_srt.mem.radix_cache_cpp import CppRadixCache
from lite_srt.mem.req_table import ReqToTokenTable

__all__ = [
    "CppRadixCache",
    "KVAllocator",
    "KVPool",
    "MatchResult",
    "NaiveCache",
    "PrefixCache",
    "RadixCache",
    "ReqToTokenTable",
    "check_pool_invariant",
    "create_prefix_cache",
    "owned_slots",
]
