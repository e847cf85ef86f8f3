"""RadixCache: a radix tree of token sequences whose nodes hold the KV slots of their tokens.

Each edge (node) holds a run of tokens (`key`, a multiple of page_size long) and the slots of those tokens
(`value`). Children are keyed by their first token (page_size 1) or their first page as a tuple. A match that
ends inside a node splits it, so a handle always denotes exactly the matched prefix. Locks are reference
counts applied to a node and all its ancestors; eviction removes unlocked leaves, least recently used first,
from a heap of candidate leaves with lazy invalidation (no tree scans on the hot path).

Ownership: the tree lives on the event-loop thread (the scheduler); the GPU/forward thread never calls it
and only reads the KV contents of slots the tree holds. No locks.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Any

import torch

from lite_srt.mem.allocator import KVAllocator
from lite_srt.mem.prefix_cache import MatchResult, PrefixCache

_EMPTY = torch.empty(0, dtype=torch.int64)


class _Node:
    __slots__ = ("key", "value", "parent", "children", "lock_ref", "last_access", "in_heap", "removed")

    def __init__(self, key: list[int], value: torch.Tensor, parent: _Node | None) -> None:
        self.key = key
        self.value = value
        self.parent = parent
        self.children: dict[Any, _Node] = {}
        self.lock_ref = 0  # locks on this node plus on every descendant
        self.last_access = 0
        self.in_heap = False  # has an entry in the eviction heap whose time is <= last_access
        self.removed = False

    def __repr__(self) -> str:
        return f"_Node(len={len(self.key)}, lock_ref={self.lock_ref}, children={len(self.children)})"


def _common_prefix_len(a: list[int], start: int, end: int, b: list[int]) -> int:
    """Length of the common prefix of a[start:end] and b."""
    n = min(end - start, len(b))
    if a[start : start + n] == b[:n]:  # fast path: whole-edge match, compared in C
        return n
    i = 0
    while a[start + i] == b[i]:
        i += 1
    return i


class RadixCache(PrefixCache):
    """Pure-Python radix prefix cache (see module docstring)."""

    def __init__(self, allocator: KVAllocator, page_size: int) -> None:
        super().__init__(allocator, page_size)
        self._clock = itertools.count(1)
        self._seq = itertools.count()
        self._clear()

    def _clear(self) -> None:
        self._root = _Node([], _EMPTY, None)
        self._heap: list[tuple[int, int, _Node]] = []
        self._evictable = 0
        self._protected = 0
        self._num_nodes = 0
        self._num_locks = 0  # outstanding lock() calls on non-root handles

    # ---- sizes ---------------------------------------------------------------------------------------

    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def protected_size(self) -> int:
        return self._protected

    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    # ---- match / insert ------------------------------------------------------------------------------

    def _child_key(self, tokens: list[int], i: int) -> Any:
        return tokens[i] if self.page_size == 1 else tuple(tokens[i : i + self.page_size])

    def _aligned(self, n: int) -> int:
        return n - n % self.page_size

    def _walk(self, tokens: list[int], n: int) -> tuple[_Node, int, list[torch.Tensor]]:
        """Follow tokens[:n] (n page-aligned) down the tree, splitting a node where the match ends inside it.

        Returns the deepest matched node, the matched length and the matched nodes' values. Touches LRU time.
        """
        now = next(self._clock)
        node, i, values = self._root, 0, []
        while i < n:
            child = node.children.get(self._child_key(tokens, i))
            if child is None:
                break
            m = self._aligned(_common_prefix_len(tokens, i, n, child.key))
            if m < len(child.key):
                child = self._split(child, m)
            child.last_access = now
            values.append(child.value)
            node, i = child, i + m
            if m == 0:  # unreachable with page-keyed children, kept as a guard against an infinite loop
                break
        return node, i, values

    def _split(self, node: _Node, m: int) -> _Node:
        """Insert a new parent holding node's first m tokens; `node` keeps its identity (handles stay valid)."""
        parent = node.parent
        assert parent is not None and 0 < m < len(node.key)
        upper = _Node(node.key[:m], node.value[:m], parent)
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        parent.children[self._child_key(node.key, 0)] = upper
        node.key, node.value, node.parent = node.key[m:], node.value[m:], upper
        upper.children[self._child_key(node.key, 0)] = node
        self._num_nodes += 1
        return upper

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        tokens = list(token_ids)
        node, length, values = self._walk(tokens, self._aligned(len(tokens)))
        if length == 0:
            return MatchResult(self._root, _EMPTY)
        return MatchResult(node, torch.cat(values) if len(values) > 1 else values[0])

    def insert(self, token_ids: Sequence[int], slots: torch.Tensor, owned_from: int) -> int:
        tokens = list(token_ids)
        if slots.numel() != len(tokens):
            raise ValueError(f"RadixCache.insert: {slots.numel()} slots for {len(tokens)} tokens")
        if not 0 <= owned_from <= len(tokens) or owned_from % self.page_size:
            raise ValueError(
                f"RadixCache.insert: owned_from {owned_from} must be a multiple of page_size "
                f"{self.page_size} in [0, {len(tokens)}]"
            )
        n = self._aligned(len(tokens))
        node, matched, _ = self._walk(tokens, n)
        if matched < min(owned_from, n):
            raise RuntimeError(
                f"RadixCache.insert: only {matched} of the {owned_from} tokens said to come from the cache "
                "are cached (was the match unlocked before insert?)"
            )
        slots = slots.to(dtype=torch.int64, device="cpu")
        if matched < n:
            self._add_leaf(node, tokens[matched:n], slots[matched:n].clone())
        # The caller's slots for positions someone else already cached, and its unaligned tail.
        to_free = [slots[owned_from:matched], slots[max(n, owned_from) :]]
        self.allocator.free(torch.cat(to_free))
        return n

    def _add_leaf(self, parent: _Node, key: list[int], value: torch.Tensor) -> None:
        leaf = _Node(key, value, parent)
        leaf.last_access = next(self._clock)
        parent.children[self._child_key(key, 0)] = leaf
        self._num_nodes += 1
        self._evictable += len(key)
        self._push_if_evictable(leaf)

    # ---- locks ---------------------------------------------------------------------------------------

    def lock(self, handle: Any) -> None:
        node: _Node = handle
        if node is self._root:
            return
        if node.removed:
            raise RuntimeError("RadixCache.lock: the node was evicted (lock right after match_prefix)")
        self._num_locks += 1
        while node.parent is not None:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, handle: Any) -> None:
        node: _Node = handle
        if node is self._root:
            return
        if node.lock_ref <= 0:
            raise RuntimeError("RadixCache.unlock: the node is not locked")
        self._num_locks -= 1
        while node.parent is not None:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
                self._push_if_evictable(node)
            node = node.parent

    # ---- eviction ------------------------------------------------------------------------------------

    def _push_if_evictable(self, node: _Node) -> None:
        if node.in_heap or node.children or node.lock_ref or node.parent is None:
            return
        node.in_heap = True
        heapq.heappush(self._heap, (node.last_access, next(self._seq), node))

    def evict(self, num_tokens: int) -> int:
        freed: list[torch.Tensor] = []
        num_freed = 0
        while num_freed < num_tokens and self._heap:
            stamp, _, node = heapq.heappop(self._heap)
            node.in_heap = False
            if node.removed or node.children or node.lock_ref:
                continue  # stale entry; the node is pushed again when it becomes an evictable leaf
            if stamp < node.last_access:  # touched since pushed: re-queue at its real time
                self._push_if_evictable(node)
                continue
            freed.append(node.value)
            num_freed += len(node.key)
            self._remove_leaf(node)
        if freed:
            self.allocator.free(torch.cat(freed))
        return num_freed

    def _remove_leaf(self, node: _Node) -> None:
        parent = node.parent
        assert parent is not None
        del parent.children[self._child_key(node.key, 0)]
        node.removed = True
        self._num_nodes -= 1
        self._evictable -= len(node.key)
        self._push_if_evictable(parent)

    # ---- whole-tree operations -----------------------------------------------------------------------

    def _nodes(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def reset(self) -> None:
        if self._num_locks or self._protected:
            raise RuntimeError(
                f"RadixCache.reset: {self._num_locks} lock(s) still held ({self._protected} protected slots)"
            )
        values = [node.value for node in self._nodes()]
        for node in self._nodes():
            node.removed = True
        if values:
            self.allocator.free(torch.cat(values))
        self._clear()

    def check_integrity(self) -> None:
        errors: list[str] = []
        evictable = protected = direct_locks = 0
        all_slots = []
        nodes = self._nodes()
        for node in nodes:
            errors.extend(self._check_node(node))
            child_locks = sum(c.lock_ref for c in node.children.values())
            direct_locks += node.lock_ref - child_locks
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
            all_slots.append(node.value)
        slots = torch.cat(all_slots) if all_slots else _EMPTY
        if slots.numel() != torch.unique(slots).numel():
            errors.append("a slot is held by two nodes")
        if slots.numel() and bool(self.allocator.is_free(slots).any()):
            errors.append("a cached slot's page is free in the allocator")
        expected = (self._evictable, self._protected, self._num_nodes, self._num_locks)
        actual = (evictable, protected, len(nodes), direct_locks)
        if expected != actual:
            errors.append(f"(evictable, protected, nodes, locks) counters {expected} != recomputed {actual}")
        if errors:
            raise RuntimeError("RadixCache integrity: " + "; ".join(errors))

    def _check_node(self, node: _Node) -> list[str]:
        errors = []
        p = self.page_size
        parent = node.parent
        if parent is None or parent.children.get(self._child_key(node.key, 0)) is not node:
            errors.append(f"{node!r} is not indexed by its parent under its first page")
        if not node.key or len(node.key) % p or node.value.numel() != len(node.key):
            errors.append(f"{node!r} has {len(node.key)} tokens, {node.value.numel()} slots (page {p})")
        elif p > 1 and bool((node.value[::p] % p != 0).any()):
            errors.append(f"{node!r} has a page not starting at a page boundary")
        child_locks = sum(c.lock_ref for c in node.children.values())
        if node.lock_ref < child_locks:
            errors.append(f"{node!r} lock_ref {node.lock_ref} < its children's {child_locks}")
        if not node.children and not node.lock_ref and not node.in_heap:
            errors.append(f"evictable leaf {node!r} is missing from the eviction heap")
        if node.removed:
            errors.append(f"{node!r} is marked removed but still in the tree")
        return errors
