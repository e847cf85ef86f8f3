"""NaiveCache: the PrefixCache that never reuses anything (the --disable-radix-cache A/B baseline).

Matches are always empty and `insert` frees every slot handed over, so a request recomputes its whole
prompt. Ownership: lives on the event-loop thread (the scheduler), like every cache. No locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lite_srt.mem.prefix_cache import MatchResult, PrefixCache


class NaiveCache(PrefixCache):
    """Holds no slots: match returns an empty prefix, insert frees slots[owned_from:] and returns 0."""

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        return MatchResult()

    def lock(self, handle: Any) -> None:
        pass

    def unlock(self, handle: Any) -> None:
        pass

    def insert(self, token_ids: Sequence[int], slots: torch.Tensor, owned_from: int) -> int:
        if slots.numel() != len(token_ids):
            raise ValueError(f"NaiveCache.insert: {slots.numel()} slots for {len(token_ids)} tokens")
        self.allocator.free(slots[owned_from:])
        return 0

    def evict(self, num_tokens: int) -> int:
        return 0

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0

    @property
    def num_nodes(self) -> int:
        return 0

    def reset(self) -> None:
        pass

    def check_integrity(self) -> None:
        pass
