"""CppRadixCache: the PrefixCache interface on top of the C++ radix tree (lite_srt._C.RadixTree).

Same semantics as RadixCache (radix_cache.py); the tree and its LRU heap live in C++ (csrc/radix/), the
allocator stays in Python: every slot the tree drops comes back as an array and is freed here. Handles
are integer node ids (0 = root), so using an evicted handle raises instead of touching freed memory.

Ownership: lives on the event-loop thread (the scheduler); the GPU/forward thread never calls it. No locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lite_srt.mem.allocator import KVAllocator
from lite_srt.mem.prefix_cache import MatchResult, PrefixCache


def _load_tree_class() -> Any:
    try:
        from lite_srt import _C
    except ImportError as e:
        raise ImportError(
            f"CppRadixCache needs the lite_srt._C extension, which failed to import: {e}"
        ) from e
    tree_cls = getattr(_C, "RadixTree", None)
    if tree_cls is None:
        raise ImportError(
            "lite_srt._C was built without the C++ radix tree (csrc/radix/); rebuild with "
            "`pip install --no-build-isolation -e .`"
        )
    return tree_cls


def _tokens(token_ids: Sequence[int]) -> Sequence[int]:
    # Lists and tuples go straight to C++ (read with the C API); other sequences become a list.
    return token_ids if isinstance(token_ids, (list, tuple, np.ndarray)) else list(token_ids)


class CppRadixCache(PrefixCache):
    """Radix prefix cache backed by lite_srt._C.RadixTree (see module docstring)."""

    def __init__(self, allocator: KVAllocator, page_size: int) -> None:
        super().__init__(allocator, page_size)
        self._tree = _load_tree_class()(page_size)

    def _free(self, slots: np.ndarray) -> None:
        if slots.size:
            self.allocator.free(torch.from_numpy(slots))

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        node_id, slots = self._tree.match_prefix(_tokens(token_ids))
        return MatchResult(node_id, torch.from_numpy(slots))

    def lock(self, handle: Any) -> None:
        self._tree.lock(handle)

    def unlock(self, handle: Any) -> None:
        self._tree.unlock(handle)

    def insert(self, token_ids: Sequence[int], slots: torch.Tensor, owned_from: int) -> int:
        if slots.numel() != len(token_ids):
            raise ValueError(f"CppRadixCache.insert: {slots.numel()} slots for {len(token_ids)} tokens")
        slot_array = slots.detach().to(device="cpu", dtype=torch.int64).numpy()
        cached_len, to_free = self._tree.insert(_tokens(token_ids), slot_array, owned_from)
        self._free(to_free)
        return int(cached_len)

    def evict(self, num_tokens: int) -> int:
        freed = self._tree.evict(num_tokens)
        self._free(freed)
        return int(freed.size)

    @property
    def evictable_size(self) -> int:
        return self._tree.evictable_size

    @property
    def protected_size(self) -> int:
        return self._tree.protected_size

    @property
    def num_nodes(self) -> int:
        return self._tree.num_nodes

    def reset(self) -> None:
        self._free(self._tree.reset())

    def check_integrity(self) -> None:
        errors = list(self._tree.integrity_errors())
        slots = self._tree.all_slots()
        if slots.size and bool(self.allocator.is_free(torch.from_numpy(slots)).any()):
            errors.append("a cached slot's page is free in the allocator")
        if errors:
            raise RuntimeError("CppRadixCache integrity: " + "; ".join(errors))
