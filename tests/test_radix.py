"""Radix prefix cache: unit tests of split/match/lock/evict/insert, and a stateful property test against a
naive model, run for every implementation (Python, C++ when built) at page sizes 1 and 4."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lite_srt.mem import KVAllocator, PrefixCache, RadixCache

CacheFactory = Callable[[KVAllocator, int], PrefixCache]


def _cpp_factory() -> CacheFactory | None:
    try:
        from lite_srt.mem.radix_cache_cpp import CppRadixCache

        CppRadixCache(KVAllocator(4, 1), 1)
    except ImportError:
        return None
    return CppRadixCache


_CPP = _cpp_factory()
IMPLS = [
    pytest.param(RadixCache, id="python"),
    pytest.param(
        _CPP,
        id="cpp",
        marks=pytest.mark.skipif(_CPP is None, reason="lite_srt._C is not built with the C++ radix tree"),
    ),
]


@pytest.fixture(params=IMPLS)
def impl(request) -> CacheFactory:
    return request.param


def _new(impl: CacheFactory, num_slots: int, page_size: int) -> tuple[KVAllocator, PrefixCache]:
    alloc = KVAllocator(num_slots, page_size)
    return alloc, impl(alloc, page_size)


def _store(alloc: KVAllocator, cache: PrefixCache, tokens: list[int]) -> torch.Tensor:
    """Run a request for `tokens` from scratch-or-prefix and cache it; returns the slots it used."""
    m = cache.match_prefix(tokens[:-1])
    cache.lock(m.handle)
    last = int(m.slots[-1]) if m.length else -1
    slots = torch.cat((m.slots, alloc.alloc(len(tokens) - m.length, last)))
    cache.insert(tokens, slots, m.length)
    cache.unlock(m.handle)
    return slots


def test_radix_match_splits_node_and_returns_prefix_slots(impl):
    alloc, cache = _new(impl, 64, 1)
    slots = _store(alloc, cache, [1, 2, 3, 4, 5, 6])
    assert cache.num_nodes == 1
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.length == 3 and torch.equal(m.slots, slots[:3])
    assert cache.num_nodes == 2  # the edge [1..6] split at 3
    assert torch.equal(cache.match_prefix([1, 2, 3, 4, 5, 6, 7]).slots, slots)
    assert cache.match_prefix([2, 3]).length == 0
    cache.check_integrity()


def test_radix_match_is_truncated_to_page_size(impl):
    alloc, cache = _new(impl, 64, 4)
    tokens = list(range(11))
    slots = _store(alloc, cache, tokens)
    assert cache.size == 8  # the 3-token tail was freed
    assert alloc.available_slots == 64 - 8
    assert cache.match_prefix(tokens).length == 8
    m = cache.match_prefix([0, 1, 2, 3, 4, 5, 99, 99])  # diverges inside the second page
    assert m.length == 4 and torch.equal(m.slots, slots[:4])
    assert cache.match_prefix([0, 1, 2]).length == 0
    cache.check_integrity()


def test_radix_lock_protects_node_and_ancestors_from_eviction(impl):
    alloc, cache = _new(impl, 64, 1)
    _store(alloc, cache, [1, 2, 3, 4])
    _store(alloc, cache, [1, 2, 7, 8, 9])  # splits: [1,2] -> {[3,4], [7,8,9]}
    m = cache.match_prefix([1, 2, 3, 4])
    cache.lock(m.handle)
    assert cache.protected_size == 4 and cache.evictable_size == 3
    assert cache.evict(100) == 3  # only the unlocked branch goes
    assert cache.match_prefix([1, 2, 3, 4]).length == 4
    assert cache.match_prefix([1, 2, 7]).length == 2
    cache.check_integrity()
    cache.unlock(m.handle)
    assert cache.evictable_size == 4 and cache.protected_size == 0
    assert cache.evict(1) == 2  # a whole leaf goes: [3, 4]
    assert cache.evict(1) == 2  # then its parent became a leaf: [1, 2]
    assert cache.size == 0 and alloc.available_slots == 64
    cache.check_integrity()


def test_radix_evicts_least_recently_used_leaf_first(impl):
    alloc, cache = _new(impl, 64, 1)
    for first in (10, 20, 30):
        _store(alloc, cache, [first, 1, 2])
    cache.match_prefix([10, 1, 2])  # the oldest becomes the newest
    assert cache.evict(1) == 3  # a whole leaf goes: [20, 1, 2], now least recently used
    assert cache.match_prefix([20, 1, 2]).length == 0
    assert cache.match_prefix([30, 1, 2]).length == 3
    assert cache.evict(1) == 3
    assert cache.match_prefix([10, 1, 2]).length == 0
    # A split keeps the untouched lower part's old time: it goes before a newer leaf.
    _store(alloc, cache, [40, 1, 2])
    assert cache.match_prefix([30, 1]).length == 2
    assert cache.evict(1) == 1
    assert cache.match_prefix([30, 1, 2]).length == 2
    assert cache.match_prefix([40, 1, 2]).length == 3
    cache.check_integrity()


def test_radix_insert_frees_duplicates_and_tail(impl):
    alloc, cache = _new(impl, 64, 2)
    first = _store(alloc, cache, [1, 2, 3, 4])
    # A second request computed the same prefix concurrently (no match when it started).
    dup = alloc.alloc(5)
    free_before = alloc.available_slots
    assert cache.insert([1, 2, 3, 4, 5], dup, 0) == 4
    assert alloc.available_slots == free_before + 6  # 4 duplicate slots + the 1-token tail's page
    assert cache.size == 4 and torch.equal(cache.match_prefix([1, 2, 3, 4]).slots, first)
    # An extension stores only the new pages; the old ones stay.
    m = cache.match_prefix([1, 2, 3, 4, 5, 6, 7])
    cache.lock(m.handle)
    ext = torch.cat((m.slots, alloc.alloc(3, int(m.slots[-1]))))
    assert cache.insert([1, 2, 3, 4, 5, 6, 7], ext, m.length) == 6
    cache.unlock(m.handle)
    assert cache.size == 6 and alloc.available_slots == 64 - 6
    cache.check_integrity()


def test_radix_reset_refuses_while_locked_then_frees_all(impl):
    alloc, cache = _new(impl, 32, 1)
    _store(alloc, cache, [1, 2, 3])
    m = cache.match_prefix([1, 2])
    cache.lock(m.handle)
    with pytest.raises(RuntimeError, match="lock"):
        cache.reset()
    cache.unlock(m.handle)
    cache.reset()
    assert cache.size == 0 and cache.num_nodes == 0 and alloc.available_slots == 32
    assert cache.match_prefix([1, 2, 3]).length == 0
    cache.check_integrity()


def test_radix_unlock_without_lock_raises(impl):
    alloc, cache = _new(impl, 32, 1)
    _store(alloc, cache, [1, 2, 3])
    m = cache.match_prefix([1, 2, 3])
    with pytest.raises(RuntimeError, match="not locked"):
        cache.unlock(m.handle)


def test_radix_lock_of_evicted_handle_raises(impl):
    alloc, cache = _new(impl, 32, 1)
    _store(alloc, cache, [1, 2, 3])
    m = cache.match_prefix([1, 2, 3])
    assert cache.evict(3) == 3
    with pytest.raises(RuntimeError):
        cache.lock(m.handle)
    cache.check_integrity()


def test_radix_check_integrity_detects_corrupted_counter():
    alloc, cache = _new(RadixCache, 32, 1)
    _store(alloc, cache, [1, 2, 3])
    cache._evictable += 1
    with pytest.raises(RuntimeError, match="counters"):
        cache.check_integrity()


# ---- stateful property test ----------------------------------------------------------------------------

_SUFFIX = st.lists(st.integers(0, 3), min_size=1, max_size=9)


class _Request:
    def __init__(self, tokens: list[int], handle: object, slots: torch.Tensor, owned_from: int) -> None:
        self.tokens, self.handle, self.slots, self.owned_from = tokens, handle, slots, owned_from


class RadixMachine(RuleBasedStateMachine):
    """Drives a cache like the scheduler would; a fake KV pool records which prefix each slot's KV is for."""

    impl: CacheFactory = RadixCache
    page_size: int = 1
    num_slots: int = 48

    def __init__(self) -> None:
        super().__init__()
        self.alloc = KVAllocator(self.num_slots, self.page_size)
        self.cache = self.impl(self.alloc, self.page_size)
        self.kv: dict[int, tuple[int, ...]] = {}  # slot -> the token prefix its KV was computed for
        self.running: list[_Request] = []
        self.stored: set[tuple[int, ...]] = set()  # page-aligned sequences inserted since the last reset
        self.evicted = False
        self.history: list[list[int]] = []  # every sequence seen, to build prompts that share prefixes

    # -- helpers
    def _draw_tokens(self, data) -> list[int]:
        """A prefix of an earlier sequence (random cut) plus a random suffix, at least one token."""
        base: list[int] = []
        if self.history and data.draw(st.integers(0, 3)):  # mostly reuse
            base = data.draw(st.sampled_from(self.history))
            cut = data.draw(st.one_of(st.just(len(base)), st.integers(0, len(base))))
            base = base[:cut]
        tokens = base + data.draw(_SUFFIX)
        tokens = tokens or [0]
        self.history.append(tokens)
        return tokens

    def _aligned(self, n: int) -> int:
        return n - n % self.page_size

    def _best_prefix(self, tokens: list[int]) -> int:
        best = 0
        for seq in self.stored:
            n = 0
            while n < min(len(seq), len(tokens)) and seq[n] == tokens[n]:
                n += 1
            best = max(best, self._aligned(n))
        return best

    def _check_match(self, tokens: list[int]):
        m = self.cache.match_prefix(tokens)
        assert m.length % self.page_size == 0 and m.length <= len(tokens)
        for i, slot in enumerate(m.slots.tolist()):
            assert self.kv.get(slot) == tuple(tokens[: i + 1]), "matched slot holds another prefix's KV"
        best = self._best_prefix(tokens)
        assert m.length <= best
        if not self.evicted:
            assert m.length == best
        return m

    def _owned(self) -> int:
        p = self.page_size
        return sum(-(-(r.slots.numel() - r.owned_from) // p) * p for r in self.running)

    # -- rules
    @rule(data=st.data())
    def start_request(self, data) -> None:
        tokens = self._draw_tokens(data)
        m = self._check_match(tokens[:-1])
        self.cache.lock(m.handle)
        last = int(m.slots[-1]) if m.length else -1
        new = self.alloc.alloc(len(tokens) - m.length, last)
        if new is None:
            self.evicted |= self.cache.evict(len(tokens)) > 0
            new = self.alloc.alloc(len(tokens) - m.length, last)
        if new is None:
            self.cache.unlock(m.handle)
            return
        for i, slot in enumerate(new.tolist(), start=m.length):
            self.kv[slot] = tuple(tokens[: i + 1])
        self.running.append(_Request(tokens, m.handle, torch.cat((m.slots, new)), m.length))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish_request(self, data) -> None:
        req = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        n = self.cache.insert(req.tokens, req.slots, req.owned_from)
        assert n == self._aligned(len(req.tokens))
        self.cache.unlock(req.handle)
        if n:
            self.stored.add(tuple(req.tokens[:n]))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def cache_running_prefix(self, data) -> None:
        """Chunked-prefill style: cache a running request's aligned prefix and switch to the cache's slots."""
        req = self.running[data.draw(st.integers(0, len(self.running) - 1))]
        n = self._aligned(req.slots.numel())
        if n <= req.owned_from:
            return
        assert self.cache.insert(req.tokens[:n], req.slots[:n], req.owned_from) == n
        self.stored.add(tuple(req.tokens[:n]))
        m = self.cache.match_prefix(req.tokens[:n])
        assert m.length == n
        self.cache.lock(m.handle)
        self.cache.unlock(req.handle)
        req.handle, req.owned_from = m.handle, n
        req.slots = torch.cat((m.slots, req.slots[n:]))

    @rule(data=st.data())
    def match_only(self, data) -> None:
        self._check_match(self._draw_tokens(data))

    @rule(num=st.integers(0, 20))
    def evict(self, num: int) -> None:
        before = self.cache.evictable_size
        freed = self.cache.evict(num)
        assert freed >= min(num, before) and self.cache.evictable_size == before - freed
        self.evicted |= freed > 0

    @precondition(lambda self: not self.running)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        self.stored.clear()
        self.evicted = False
        assert self.alloc.available_slots == self.num_slots

    # -- invariants
    @invariant()
    def pool_accounting_holds(self) -> None:
        self.cache.check_integrity()
        assert self.cache.size == self.cache.evictable_size + self.cache.protected_size
        assert self.alloc.available_slots + self.cache.size + self._owned() == self.num_slots

    @invariant()
    def running_slots_still_hold_their_kv(self) -> None:
        for req in self.running:
            for i, slot in enumerate(req.slots.tolist()):
                assert self.kv.get(slot) == tuple(req.tokens[: i + 1]), "a running request's slot was reused"
        for req in self.running:
            assert not bool(self.alloc.is_free(req.slots).any())


_SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)


@pytest.mark.parametrize("page_size", [1, 4])
def test_radix_cache_matches_naive_model_under_random_operations(impl, page_size):
    machine = type(
        f"RadixMachine_{getattr(impl, '__name__', 'impl')}_{page_size}",
        (RadixMachine,),
        {"impl": staticmethod(impl), "page_size": page_size, "num_slots": 48 if page_size == 1 else 128},
    )
    run_state_machine_as_test(machine, settings=_SETTINGS)
