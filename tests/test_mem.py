"""KV pool, allocator, request->token table, naive cache and pool accounting (CPU unit tests)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from lite_srt.mem import (
    KVAllocator,
    KVPool,
    NaiveCache,
    RadixCache,
    ReqToTokenTable,
    check_pool_invariant,
    create_prefix_cache,
    owned_slots,
)

# ---- KVPool ---------------------------------------------------------------------------------------------


def test_kv_pool_buffers_have_dummy_slot_and_layer_views():
    pool = KVPool(num_layers=3, num_slots=10, num_kv_heads=2, head_dim=8, dtype=torch.float16, device="cpu")
    assert len(pool.k_buffers) == len(pool.v_buffers) == 3
    assert pool.k_buffers[1].shape == (11, 2, 8) and pool.k_buffers[1].dtype == torch.float16
    assert pool.dummy_slot == 10
    pool.k_buffers[2][pool.dummy_slot] = 1.0  # writes through to the shared storage
    assert pool.k_data[2, 10].eq(1).all() and pool.k_data[1].eq(0).all()
    assert pool.bytes_per_token == 2 * 3 * 2 * 8 * 2


def test_kv_pool_slots_for_bytes_fits_and_respects_page_size():
    args = dict(num_layers=30, num_kv_heads=3, head_dim=64, dtype=torch.bfloat16)
    per_token = 2 * 30 * 3 * 64 * 2
    budget = per_token * 1000 + 7
    slots = KVPool.slots_for_bytes(budget, **args, page_size=16)
    assert slots % 16 == 0
    assert (slots + 1) * per_token <= budget < (slots + 1 + 16) * per_token
    assert KVPool.slots_for_bytes(per_token // 2, **args) == 0


# ---- KVAllocator ----------------------------------------------------------------------------------------


def test_allocator_rejects_pool_not_a_multiple_of_page_size():
    with pytest.raises(ValueError, match="multiple of page_size"):
        KVAllocator(10, 4)


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_allocator_positions_keep_page_offset_and_fill_last_page_first(page_size):
    alloc = KVAllocator(64 * page_size, page_size)
    slots = alloc.alloc(5)
    positions = list(range(5))
    for step in (1, 3, page_size + 2, 1):
        more = alloc.alloc(step, int(slots[-1]))
        slots = torch.cat((slots, more))
        positions += list(range(positions[-1] + 1, positions[-1] + 1 + step))
    pos = torch.tensor(positions)
    assert torch.equal(slots % page_size, pos % page_size)
    # Consecutive positions inside one page share the page.
    same_page = (pos[1:] // page_size) == (pos[:-1] // page_size)
    assert torch.equal((slots[1:] // page_size)[same_page], (slots[:-1] // page_size)[same_page])
    assert slots.unique().numel() == slots.numel()
    pages_used = -(-len(positions) // page_size)
    assert alloc.available_slots == alloc.total_slots - pages_used * page_size


def test_allocator_failed_alloc_allocates_nothing():
    alloc = KVAllocator(16, 4)
    first = alloc.alloc(6)  # pages 0 and 1, 2 slots of page 1 left to the request
    assert alloc.available_slots == 8
    assert alloc.alloc(11, int(first[-1])) is None  # needs 2 in-page + 9 = 3 new pages, only 2 free
    assert alloc.available_slots == 8
    assert alloc.alloc(10, int(first[-1])) is not None  # 2 in-page + 8 = exactly 2 pages
    assert alloc.available_slots == 0
    assert alloc.alloc(1) is None
    assert alloc.alloc(0).numel() == 0


def test_allocator_free_counts_each_page_once_and_refuses_double_free():
    alloc = KVAllocator(16, 4)
    slots = alloc.alloc(7)
    alloc.free(torch.cat((slots, slots[:3])))  # repeated slots of the same pages
    assert alloc.available_slots == 16
    with pytest.raises(RuntimeError, match="double free"):
        alloc.free(slots[:1])
    assert alloc.available_slots == 16


def test_allocator_reset_frees_everything_and_rejects_bad_slots():
    alloc = KVAllocator(8, 2)
    alloc.alloc(8)
    assert alloc.available_slots == 0
    alloc.reset()
    assert alloc.available_slots == 8
    assert torch.equal(alloc.alloc(8), torch.arange(8))
    with pytest.raises(ValueError, match="outside"):
        alloc.free(torch.tensor([8]))


def test_allocator_one_million_slots_is_fast():
    alloc = KVAllocator(1 << 20, 1)
    start = time.perf_counter()
    alloc.free(alloc.alloc(1 << 20))
    chunks = [alloc.alloc(4096) for _ in range(200)]
    for chunk in chunks:
        alloc.free(chunk)
    elapsed = time.perf_counter() - start
    assert alloc.available_slots == 1 << 20
    # A per-slot Python loop would take seconds here; the vectorized path takes ~0.1 s.
    assert elapsed < 2.0, f"alloc/free of 2M slots took {elapsed:.2f} s"


@pytest.mark.parametrize("page_size", [1, 4])
def test_allocator_alloc_next_matches_one_by_one_alloc(page_size):
    batched, single = KVAllocator(64, page_size), KVAllocator(64, page_size)
    starts = [1, 3, 4, 6]  # prompt lengths: some end mid-page, some on a page boundary
    last_b = torch.stack([batched.alloc(n)[-1] for n in starts])
    last_s = [int(single.alloc(n)[-1]) for n in starts]
    for _ in range(6):
        last_b = batched.alloc_next(last_b)
        last_s = [int(single.alloc(1, s)[0]) for s in last_s]
        assert last_b.tolist() == last_s
    assert batched.available_slots == single.available_slots
    full = KVAllocator(4, 4)
    last = full.alloc(4)[-1:]
    assert full.alloc_next(last) is None and full.available_slots == 0


@pytest.mark.parametrize("page_size", [1, 4])
def test_allocator_alloc_next_takes_numpy_like_tensors(page_size):
    a, b = KVAllocator(64, page_size), KVAllocator(64, page_size)
    last_a = torch.stack([a.alloc(n)[-1] for n in (1, 3, 4)])
    last_b = torch.stack([b.alloc(n)[-1] for n in (1, 3, 4)])
    for _ in range(5):
        last_a = a.alloc_next(last_a)
        last_b = b.alloc_next(last_b.numpy().copy())
        assert torch.equal(last_a, last_b)
    assert a.available_slots == b.available_slots
    nearly_full = KVAllocator(4, 1)
    nearly_full.alloc(3)
    assert nearly_full.alloc_next(np.array([0, 1])) is None and nearly_full.available_slots == 1


# ---- ReqToTokenTable -----------------------------------------------------------------------------------


def test_req_table_rows_write_read_and_exhaust():
    table = ReqToTokenTable(max_reqs=2, max_context_len=8, device="cpu")
    a, b = table.alloc(), table.alloc()
    assert {a, b} == {0, 1} and table.alloc() is None and table.available == 0
    table.write(a, 2, torch.tensor([5, 6, 7]))
    out = table.read(a, 2, 5)
    assert out.dtype == torch.int64 and out.tolist() == [5, 6, 7]
    with pytest.raises(IndexError):
        table.write(a, 6, torch.tensor([1, 2, 3]))
    table.free(b)
    with pytest.raises(RuntimeError, match="not allocated"):
        table.free(b)
    assert table.alloc() == b


# ---- NaiveCache and accounting --------------------------------------------------------------------------


def test_naive_cache_never_matches_and_frees_inserted_slots():
    alloc = KVAllocator(16, 4)
    cache = NaiveCache(alloc, 4)
    slots = alloc.alloc(10)
    check_pool_invariant(alloc, cache, owned_slots(10, 0, 4))
    assert cache.insert(list(range(10)), slots, 0) == 0
    assert cache.match_prefix(list(range(10))).length == 0
    assert alloc.available_slots == 16 and cache.size == 0
    check_pool_invariant(alloc, cache, 0)


def test_pool_invariant_reports_a_leak():
    alloc = KVAllocator(16, 1)
    cache = RadixCache(alloc, 1)
    alloc.alloc(3)
    with pytest.raises(RuntimeError, match="free 13 \\+ owned 2 \\+ cached 0"):
        check_pool_invariant(alloc, cache, 2)


def test_create_prefix_cache_picks_by_flag_and_checks_page_size():
    alloc = KVAllocator(16, 4)
    assert isinstance(create_prefix_cache(alloc, 4, disable_radix_cache=True), NaiveCache)
    assert isinstance(create_prefix_cache(alloc, 4, disable_radix_cache=False, use_cpp=False), RadixCache)
    auto = create_prefix_cache(alloc, 4, disable_radix_cache=False)
    assert type(auto).__name__ in ("RadixCache", "CppRadixCache")
    with pytest.raises(ValueError, match="page_size"):
        RadixCache(alloc, 2)


def test_default_max_running_follows_the_kv_pool() -> None:
    from lite_srt.engine.model_runner import default_max_running

    assert default_max_running(4096) == 256  # small pools keep the earlier fixed default
    assert default_max_running(818_284) == 799  # Llama-3.1-8B on an H200: one stream per 1,024 slots
    assert default_max_running(50_000_000) == 1024
