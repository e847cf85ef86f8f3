"""Cascade groups (lite_srt/engine/prefix_groups.py): the shared-prefix search and the grouping of a decode batch.

Slot lists are built the way the prefix cache hands them out: requests under the same cache path hold the same
slots for it, and every other slot belongs to one request. The scheduler-level test (real Scheduler, checked
against the req->token table) is in test_scheduler_hotpath.py.
"""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lite_srt.engine import prefix_groups as pg


def brute_lcp(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class SlotSource:
    """Fresh, never repeated slot ids, as the allocator hands them out."""

    def __init__(self) -> None:
        self._next = itertools.count(1000)

    def take(self, n: int) -> list[int]:
        return [next(self._next) for _ in range(n)]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300))
def test_shared_prefix_len_matches_a_scan(common: int, tail_a: int, tail_b: int) -> None:
    src = SlotSource()
    prefix = src.take(common)
    a, b = prefix + src.take(tail_a), prefix + src.take(tail_b)
    for limit in {0, min(len(a), len(b)), min(len(a), len(b)) // 2}:
        assert pg.shared_prefix_len(a, b, limit) == brute_lcp(a, b, limit)


def rows_for(tree: list[tuple[int, list[int]]], src: SlotSource) -> tuple[list[list[int]], list[int]]:
    """Rows of (shared length, own lengths of its requests) groups: each group's rows share a fresh prefix."""
    slots, limits = [], []
    for shared, owns in tree:
        prefix = src.take(shared)
        for own in owns:
            slots.append(prefix + src.take(own))
            limits.append(shared + own // 2)  # part of a request's own prompt is cached too: never shared
    return slots, limits


def check_valid(groups: pg.PrefixGroups, slots: list[list[int]]) -> None:
    covered = set()
    for start, size in zip(groups.starts, groups.sizes, strict=True):
        length = groups.shared_lens[start]
        assert 2 <= size <= pg.MAX_GROUP and length >= pg.MIN_SHARED and length % pg.TILE == 0
        for b in range(start, start + size):
            assert groups.shared_lens[b] == length and slots[b][:length] == slots[start][:length]
            covered.add(b)
    assert all(groups.shared_lens[b] == 0 for b in range(len(slots)) if b not in covered)


def test_groups_follow_the_shared_prefixes() -> None:
    src = SlotSource()
    # 20 requests on a 2,100-slot prompt (cut to 16 + 4), a loner, 3 on 300 slots, 2 on a too-short 200.
    slots, limits = rows_for([(2100, [5] * 20), (4000, [9]), (300, [1, 2, 3]), (200, [7, 8])], src)
    groups = pg.find_groups(slots, limits)
    assert groups is not None
    check_valid(groups, slots)
    assert list(zip(groups.starts, groups.sizes)) == [(0, 16), (16, 4), (21, 3)]
    assert [groups.shared_lens[s] for s in groups.starts] == [2048, 2048, 256]
    assert groups.saved_keys == 15 * 2048 + 3 * 2048 + 2 * 256
    assert groups.shared_lens[20] == 0 and groups.shared_lens[24:] == [0, 0]


def test_a_row_sharing_less_than_its_run_starts_a_new_run() -> None:
    """A run shares 1,024 positions; the next row shares only 512 of them, with the rows after it."""
    src = SlotSource()
    outer = src.take(512)
    inner = outer + src.take(512)
    slots = [inner + src.take(4), inner + src.take(4), outer + src.take(600), outer + src.take(600)]
    groups = pg.find_groups(slots, [len(s) - 4 for s in slots])
    assert groups is not None
    check_valid(groups, slots)
    assert list(zip(groups.starts, groups.sizes)) == [(0, 2), (2, 2)]
    assert groups.shared_lens == [1024, 1024, 512, 512]


def test_no_groups_without_sharing_or_below_the_cached_length() -> None:
    src = SlotSource()
    assert pg.find_groups([src.take(3000) for _ in range(8)], [3000] * 8) is None
    prefix = src.take(3000)
    same = [prefix + src.take(3), prefix + src.take(3)]
    assert pg.find_groups(same, [100, 3000]) is None  # one of them may share only its first 100 positions
    assert pg.find_groups(same[:1], [3000]) is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 700), st.lists(st.integers(1, 90), min_size=1, max_size=20)), max_size=6
    )
)
def test_random_trees_give_valid_groups(tree: list[tuple[int, list[int]]]) -> None:
    slots, limits = rows_for(tree, SlotSource())
    groups = pg.find_groups(slots, limits)
    if groups is None:  # then no two neighbours share a whole MIN_SHARED run
        for i in range(1, len(slots)):
            assert brute_lcp(slots[i - 1], slots[i], min(limits[i - 1], limits[i])) < pg.MIN_SHARED
        return
    check_valid(groups, slots)


def test_to_device_keeps_rows_and_sizes() -> None:
    groups = pg.PrefixGroups([0, 256, 256, 512, 512, 512], [1, 3], [2, 3])
    c = groups.to_device(torch.device("cpu"))
    assert c.shared_lens.tolist() == [0, 256, 256, 512, 512, 512]
    assert c.group_start.tolist() == [1, 3] and c.group_size.tolist() == [2, 3]
    assert (c.max_shared, c.max_group) == (512, 3)
    assert c.shared_lens.dtype == torch.int64


def test_graph_buffers_take_a_step_groups_and_capped_split_count() -> None:
    """What a cascade graph replay loads (cuda_graph.GraphInputs, CPU tensors here): the step's groups into the
    buffers' prefix, zeros past them, and the step's shared-key split count capped at the captured grid."""
    from lite_srt.engine.cuda_graph import GRAPH_SHARED_SPLITS, GraphInputs

    inp = GraphInputs.allocate(32, torch.device("cpu"), dummy_slot=0, dummy_row=0)
    inp.shared_lens.fill_(7)
    inp.group_size.fill_(9)
    step = pg.PrefixGroups([0, 256, 256, 512, 512, 512], [1, 3], [2, 3]).to_device(torch.device("cpu"))
    inp.load_cascade(step, bs=6, padded=8, splits=3)
    assert inp.shared_lens[:8].tolist() == [0, 256, 256, 512, 512, 512, 0, 0]
    assert inp.group_start[:2].tolist() == [1, 3] and inp.group_size[:4].tolist() == [2, 3, 0, 0]
    assert inp.split_count.tolist() == [3]
    view = inp.cascade(8)
    assert view.shared_splits == GRAPH_SHARED_SPLITS and view.split_count is inp.split_count
    inp.load_cascade(step, bs=6, padded=8, splits=GRAPH_SHARED_SPLITS + 5)
    assert inp.split_count.tolist() == [GRAPH_SHARED_SPLITS]
