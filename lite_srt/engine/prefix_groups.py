"""Cascade groups of a decode batch: runs of neighbouring requests that share a prefix of KV slots.

Requests matched to the same prefix-cache entries hold the same pool slots for those positions, and the scheduler
keeps running requests in slot order (`Scheduler._add_running`), so requests sharing a prefix sit side by side.
This module finds runs of neighbours sharing at least MIN_SHARED positions. The decode attention kernel then
reads each run's shared keys once for all its rows (csrc/attention/decode.cu, `decode_shared_kernel`) and each
request's own keys alone, merging the two by log-sum-exp. Without it every request re-reads the shared keys,
and on the shared-prefix benchmark the kernel was bound by issuing those loads and MMAs for 4 query rows at a
time (docs/BENCHMARKS.md).

Ownership: the scheduler builds the groups on the event-loop thread with the decode batch; the forward thread
only reads the device tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lite_srt.engine.forward_batch import list_to_device

TILE = 64  # the kernel's key tile: shared lengths are whole tiles, so each request's own keys start on one
MIN_SHARED = 256  # positions; a shorter shared prefix saves less than the extra kernel and merge cost
# Rows of one block of the shared kernel: 16 requests x 4 query heads of a GQA-4 model = 64 mma rows. Longer runs
# are cut into several groups (each reads the shared keys once).
MAX_GROUP = 16
# Below this many key reads saved per layer the cascade's two extra kernels per layer (shared pass, merge) cost
# about what it saves: at ~0.8 ns per key and row in a layer (docs/BENCHMARKS.md, bench_prefix_order) 16k keys x
# 32 layers is ~0.4 ms. Batches below cuda_graph.CASCADE_MIN_BS also lose their graph with a cascade.
MIN_SAVED_KEYS = 16384


def shared_prefix_len(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of two slot lists within their first `limit` positions.

    A slot belongs to one prefix-cache node (at one depth) or to one request, so two requests hold the same slot
    at a position only if they share the whole path up to it: once the lists differ they never agree again.
    A binary search on that monotone property costs log2(limit) compares instead of a scan."""
    lo, hi = 0, limit  # a[:lo] == b[:lo]; a[hi:limit] differs
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class CascadeBatch:
    """A decode batch's cascade groups on the device (the arguments of `decode_attention_cascade_cuda`)."""

    shared_lens: torch.Tensor  # [B] int64: shared positions of each row (0: in no group)
    group_start: torch.Tensor  # [G] int64: first row of each group
    group_size: torch.Tensor  # [G] int64
    max_shared: int
    max_group: int
    shared_splits: int = 0  # 0: the kernel picks from the groups; captured graphs fix it (blocks launched)
    # [1] int64 on the device: the splits used (captured graphs, <= shared_splits); None: shared_splits
    split_count: torch.Tensor | None = None


@dataclass
class PrefixGroups:
    shared_lens: list[int]  # per batch row; 0 = in no group
    starts: list[int]  # first row of each group (rows of a group are consecutive)
    sizes: list[int]

    @property
    def saved_keys(self) -> int:
        """Key reads per layer and KV head that the cascade saves: each group reads its prefix once, not n times."""
        return sum((n - 1) * self.shared_lens[s] for s, n in zip(self.starts, self.sizes))

    def to_device(self, device: torch.device) -> CascadeBatch:
        return CascadeBatch(
            list_to_device(self.shared_lens, torch.int64, device),
            list_to_device(self.starts, torch.int64, device),
            list_to_device(self.sizes, torch.int64, device),
            max(self.shared_lens[s] for s in self.starts),
            max(self.sizes),
        )


def find_groups(slots: list[list[int]], limits: list[int]) -> PrefixGroups | None:
    """Groups of consecutive rows sharing >= MIN_SHARED positions, or None when there is none.

    slots[i]: row i's slot list; limits[i]: how many of its leading positions can be shared (its cached length;
    its own positions past that are private). A row joins the run before it when it shares at least the run's
    length with its neighbour (then, transitively, with the whole run); runs hold at most MAX_GROUP rows."""
    n = len(slots)
    shared = [0] * n
    starts: list[int] = []
    sizes: list[int] = []
    start, run_len = 0, 0  # the open run: rows [start, i), sharing run_len positions (0 while it has one row)
    for i in range(1, n + 1):
        common = 0
        if i < n:
            limit = min(limits[i - 1], limits[i])
            a, b = slots[i - 1], slots[i]
            if limit >= MIN_SHARED and a[MIN_SHARED - 1] == b[MIN_SHARED - 1]:  # cheap reject first
                common = shared_prefix_len(a, b, limit) // TILE * TILE
        size = i - start
        if common >= MIN_SHARED and size < MAX_GROUP and (size == 1 or common >= run_len):
            run_len = common if size == 1 else run_len
            continue
        if size >= 2:
            starts.append(start)
            sizes.append(size)
            shared[start:i] = [run_len] * size
        start, run_len = i, 0
    return PrefixGroups(shared, starts, sizes) if starts else None
