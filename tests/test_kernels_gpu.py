"""CUDA kernels of lite_srt._C against the float32 torch reference, on fresh random inputs with poisoned outputs.

Runs only on a GPU machine (marked `gpu`; skipped without CUDA or without a CUDA build of lite_srt._C).
Tolerance as for bf16/fp16: max error relative to the output's magnitude <= 1e-2; NaN never passes.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from lite_srt.kernels import reference as ref

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("CUDA is not available on this machine", allow_module_level=True)
_C = pytest.importorskip("lite_srt._C", reason="lite_srt._C is not built")
if not getattr(_C, "has_cuda", False):
    pytest.skip(
        "lite_srt._C was built without CUDA (torch had no CUDA at build time)", allow_module_level=True
    )

DEV = "cuda"
HALF_TYPES = [torch.bfloat16, torch.float16]


def assert_close_rel(out: torch.Tensor, expected: torch.Tensor, tol: float = 1e-2) -> None:
    out, expected = out.float(), expected.float()
    assert not torch.isnan(out).any(), "kernel left NaN (unwritten or poisoned) elements"
    err = ((out - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()
    assert err <= tol, f"max relative error {err:.3g} > {tol}"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_table(seq_lens: list[int], s: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = len(seq_lens) + 1, max(seq_lens) + 3
    table = torch.full((rows, cols), -7, dtype=torch.int32)
    perm = torch.randperm(s)
    row_ids = torch.randperm(rows)[: len(seq_lens)]
    used = 0
    for row, n in zip(row_ids.tolist(), seq_lens, strict=True):
        table[row, :n] = perm[used : used + n].int()
        used += n
    return table.to(DEV), row_ids.to(DEV)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64), (8, 8, 128), (64, 4, 64)])
@pytest.mark.parametrize(
    "seq_lens",
    [[1], [17], [4096], [32768], [1, 17, 4096, 300, 65], [17] * 256, [1] * 256, [2048] * 64],
    ids=["b1c1", "b1c17", "b1c4k", "b1c32k", "ragged", "b256c17", "b256c1", "b64c2k"],
)
def test_decode_attention_cuda_matches_reference(dtype, hq, hkv, d, seq_lens) -> None:
    s = sum(seq_lens) + 9
    k_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    v_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    table, rows = make_table(seq_lens, s)
    lens = torch.tensor(seq_lens, device=DEV)
    q = torch.randn(len(seq_lens), hq, d, device=DEV, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    scale = 1 / math.sqrt(d)
    _C.decode_attention_cuda(out, q, k_cache, v_cache, table, rows, lens, scale)
    expected = ref.decode_attention(q.float(), k_cache.float(), v_cache.float(), table, rows, lens, scale)
    assert_close_rel(out, expected)


def make_cascade_table(groups: list[tuple[int, int]], own: list[int], s: int) -> tuple[torch.Tensor, ...]:
    """A table where each (rows, shared) group's rows hold the same slots for their first `shared` positions, then
    row i has own[i] private positions. Returns the table, row ids, seq_lens, and the cascade arguments
    (shared_lens, group starts, group sizes; a one-row group is a row in no group)."""
    perm = torch.randperm(s).int()
    prefixes, shared, starts, sizes = [], [], [], []
    used = 0
    for n, length in groups:
        if n > 1:
            starts.append(len(prefixes))
            sizes.append(n)
        prefixes += [perm[used : used + length]] * n
        shared += [length if n > 1 else 0] * n
        used += length
    lens = [len(p) + k for p, k in zip(prefixes, own, strict=True)]
    table = torch.full((len(lens) + 1, max(lens) + 3), -7, dtype=torch.int32)
    row_ids = torch.randperm(len(lens) + 1)[: len(lens)]
    for i, row in enumerate(row_ids.tolist()):
        table[row, : len(prefixes[i])] = prefixes[i]
        table[row, len(prefixes[i]) : lens[i]] = perm[used : used + own[i]]
        used += own[i]
    i64 = {"device": DEV, "dtype": torch.int64}
    return (
        table.to(DEV),
        row_ids.to(DEV),
        torch.tensor(lens, **i64),
        torch.tensor(shared, **i64),
        torch.tensor(starts, **i64),
        torch.tensor(sizes, **i64),
    )


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (28, 4, 128), (9, 3, 64), (8, 8, 64)])
@pytest.mark.parametrize(
    "groups,own",
    [
        ([(16, 2048)], [1, 5, 64, 65, 130, 1, 2, 3, 200, 17, 9, 1, 1, 1, 1, 70]),
        ([(3, 256), (1, 512), (5, 64 * 7)], [1, 100, 3, 40, 64, 65, 1, 2, 300]),
        ([(2, 64)] * 3 + [(16, 4096), (7, 1024)], [1] * 6 + list(range(1, 24))),
        # Enough rows for one key split per row: the merge then combines one own part with the shared ones.
        ([(16, 512)] * 5 + [(1, 300)] + [(8, 1024)] * 2, [1 + (i * 37) % 200 for i in range(97)]),
    ],
    ids=["one-group-2k", "mixed-with-loner", "many-groups", "one-split"],
)
@pytest.mark.parametrize("shared_kernel", ["default", "mma"])
def test_decode_attention_cascade_matches_reference(
    monkeypatch, dtype, hq, hkv, d, groups, own, shared_kernel
) -> None:
    """Rows of a group attend their shared prefix through the shared kernel and their own keys through the decode
    kernel; merged, the result is plain attention over the whole row (and rows in no group are untouched). The
    shared pass runs on the default kernel (wgmma on Hopper) and on the mma.sync one, forced."""
    if shared_kernel != "default":
        monkeypatch.setenv("LITE_SRT_CASCADE_KERNEL", shared_kernel)
    s = sum(length for _, length in groups) + sum(own) + 9
    table, rows, lens, shared, starts, sizes = make_cascade_table(groups, own, s)
    k_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    v_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    q = torch.randn(len(own), hq, d, device=DEV, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    scale = 1 / math.sqrt(d)
    max_shared, max_group = int(shared.max()), int(sizes.max())
    _C.decode_attention_cascade_cuda(
        out, q, k_cache, v_cache, table, rows, lens, scale, shared, starts, sizes, max_shared, max_group
    )
    expected = ref.decode_attention(q.float(), k_cache.float(), v_cache.float(), table, rows, lens, scale)
    assert_close_rel(out, expected)
    plain = torch.full_like(q, float("nan"))
    _C.decode_attention_cuda(plain, q, k_cache, v_cache, table, rows, lens, scale)
    assert_close_rel(out, plain)


@pytest.mark.parametrize("d", [64, 128])
def test_cascade_shared_pass_runs_on_wgmma_on_hopper(monkeypatch, d) -> None:
    """The shared pass uses the wgmma kernel wherever the build holds sm_90a code for a Hopper GPU (setup.py builds
    90a by default), mma.sync elsewhere or when forced, and none for float32 (no cascade there)."""
    q = torch.empty(1, 8, d, device=DEV, dtype=torch.bfloat16)
    hopper = torch.cuda.get_device_capability() == (9, 0)
    assert _C.decode_cascade_shared_kernel_cuda(q) == ("wgmma" if hopper else "mma")
    assert _C.decode_cascade_shared_kernel_cuda(q.float()) == "none"
    monkeypatch.setenv("LITE_SRT_CASCADE_KERNEL", "mma")
    assert _C.decode_cascade_shared_kernel_cuda(q) == "mma"


def cascade_case(groups, own, hkv: int, d: int, dtype: torch.dtype):
    """make_cascade_table's tensors plus random K and V pools large enough for them."""
    s = sum(length for _, length in groups) + sum(own) + 9
    k_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    return make_cascade_table(groups, own, s), k_cache, torch.randn_like(k_cache)


@pytest.mark.parametrize("own_splits", ["1", "3"])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_decode_attention_cascade_reads_the_step_split_count(monkeypatch, own_splits, count) -> None:
    """What captured graphs do: 5 shared-key splits launched, the step's count read from a device tensor (blocks
    past it write empty partials that the merge gives weight 0), with one and with three key splits of each
    row's own keys. The workspace is allocated over NaN-poisoned memory, so reading an empty partial's unwritten
    o would show."""
    monkeypatch.setenv("LITE_SRT_DECODE_SPLITS", own_splits)
    hq, hkv, d, dtype = 32, 8, 128, torch.bfloat16
    groups, own = [(16, 1024), (1, 300), (5, 512)], [1 + (i * 29) % 150 for i in range(22)]
    (table, rows, lens, shared, starts, sizes), k_cache, v_cache = cascade_case(groups, own, hkv, d, dtype)
    q = torch.randn(len(own), hq, d, device=DEV, dtype=dtype)
    scale = 1 / math.sqrt(d)
    parts = int(own_splits) + 5
    poison = torch.full((len(own) * hq * parts * (d + 1),), float("nan"), device=DEV)
    del poison  # the caching allocator hands this block to the op's workspace of the same size
    out = torch.full_like(q, float("nan"))
    split_count = torch.tensor([count], device=DEV)
    _C.decode_attention_cascade_cuda(
        out, q, k_cache, v_cache, table, rows, lens, scale, shared, starts, sizes, int(shared.max()),
        int(sizes.max()), 5, split_count,
    )  # fmt: skip
    expected = ref.decode_attention(q.float(), k_cache.float(), v_cache.float(), table, rows, lens, scale)
    assert_close_rel(out, expected)


@pytest.mark.parametrize("splits", ["1", "2", "5", "33", "bal64", "bal64-dev200", "bal300-dev300", "bal-off"])
@pytest.mark.parametrize("cascade", [False, True], ids=["plain", "cascade"])
def test_decode_attention_merges_splits_in_kernel(monkeypatch, splits, cascade) -> None:
    """With merge counters the last key split of each (request, KV head) merges the partials in the kernel: the
    result matches the reference and the separate merge kernel, and every counter is zero again after the launch
    (so a second launch, and a graph replay, count from zero). "balN": balanced splits with at least N keys per
    split and the step's key counts from the host, so requests of one launch use different split counts (a
    one-split row writes its output directly, the others merge) and the grid's extra splits leave at once;
    "-devM": as a captured graph runs it, the grid sized for the longest context and M keys per split read from
    a device tensor; "bal-off": key counts given but LITE_SRT_DECODE_BALANCE=0."""
    balance: tuple = ()
    if splits.startswith("bal"):
        keys, _, dev = splits.removeprefix("bal").partition("-dev")
        if keys == "-off":
            monkeypatch.setenv("LITE_SRT_DECODE_BALANCE", "0")
        else:
            monkeypatch.setenv("LITE_SRT_DECODE_MIN_KEYS", keys)
    else:
        monkeypatch.setenv("LITE_SRT_DECODE_SPLITS", splits)
    hq, hkv, d, dtype = 32, 8, 128, torch.bfloat16
    groups, own = [(9, 512), (1, 700), (4, 256)], [1 + (i * 53) % 400 for i in range(14)]
    (table, rows, lens, shared, starts, sizes), k_cache, v_cache = cascade_case(groups, own, hkv, d, dtype)
    scale = 1 / math.sqrt(d)
    counters = torch.zeros(4096, dtype=torch.int32, device=DEV)
    max_shared, max_group = int(shared.max()), int(sizes.max())  # host values: read before any capture
    if splits.startswith("bal"):
        chunk = torch.tensor([int(dev)], device=DEV) if dev else None
        balance = (int(lens.sum()), int(lens.max()) if not dev else 4 * int(lens.max()), chunk)

    def run(q: torch.Tensor, ctr: torch.Tensor | None) -> torch.Tensor:
        out = torch.full_like(q, float("nan"))
        if cascade:
            _C.decode_attention_cascade_cuda(
                out, q, k_cache, v_cache, table, rows, lens, scale, shared, starts, sizes, max_shared, max_group,
                0, None, ctr, *balance,
            )  # fmt: skip
        else:
            _C.decode_attention_cuda(out, q, k_cache, v_cache, table, rows, lens, scale, ctr, *balance)
        return out

    for _ in range(2):
        q = torch.randn(len(own), hq, d, device=DEV, dtype=dtype)
        fused = run(q, counters)
        assert int(counters.abs().sum()) == 0, "a counter was left nonzero"
        expected = ref.decode_attention(q.float(), k_cache.float(), v_cache.float(), table, rows, lens, scale)
        assert_close_rel(fused, expected)
        assert_close_rel(fused, run(q, None), tol=5e-3)  # summation order: about one bf16 ulp

    # Captured once, replayed with new queries: the counters are reset by each replay's last blocks.
    q_static = torch.randn(len(own), hq, d, device=DEV, dtype=dtype)
    out_static = run(q_static, counters)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        out_static = run(q_static, counters)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        q_static.copy_(torch.randn_like(q_static))
        graph.replay()
        torch.cuda.synchronize()
        assert int(counters.abs().sum()) == 0
        assert_close_rel(out_static, run(q_static, None), tol=5e-3)


def test_decode_split_plan_balances_a_long_request() -> None:
    """One 8k-key request among 23 of 512 keys: the one-wave plan gives every request one split, the balanced
    plan sizes the grid so the long one takes several (keys per split = the step's keys per SM, within 512..2048);
    uniform short requests stay on the one-wave plan, and no key counts means no balancing."""
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    total, longest = 23 * 512 + 8192, 8192
    floor = min(max(-(-total * 8 // sms), 512), 2048)  # 8 block columns per request (8 KV heads)
    base, chunk, grid = _C.decode_split_plan_cuda(32, 8, 24, total, longest)
    assert base == max(1, sms * 11 // 10 // 192) and chunk == floor
    assert grid == max(base, min(-(-longest // floor), sms * 11 // 10 * 64 // 192))
    assert grid > base
    short_floor = min(max(-(-24 * 512 * 8 // sms), 512), 2048)
    assert _C.decode_split_plan_cuda(32, 8, 24, 24 * 512, 512) == (base, short_floor, base)
    assert _C.decode_split_plan_cuda(32, 8, 24, 0, 0) == (base, 2048, base)
    with pytest.raises(ValueError, match="kv_heads"):
        _C.decode_split_plan_cuda(32, 0, 24, total, longest)


def test_decode_attention_rejects_bad_key_counts() -> None:
    q = torch.randn(2, 8, 64, device=DEV, dtype=torch.bfloat16)
    kc = torch.randn(64, 8, 64, device=DEV, dtype=torch.bfloat16)
    table = torch.zeros(2, 64, dtype=torch.int32, device=DEV)
    i64 = {"device": DEV, "dtype": torch.int64}
    args = [
        torch.empty_like(q),
        q,
        kc,
        kc,
        table,
        torch.arange(2, **i64),
        torch.full((2,), 3, **i64),
        0.1,
        None,
    ]
    with pytest.raises(ValueError, match="must be >= 0"):
        _C.decode_attention_cuda(*args, -1, 3)
    with pytest.raises(ValueError, match="chunk_keys needs max_keys"):
        _C.decode_attention_cuda(*args, 6, 0, torch.ones(1, **i64))


def test_decode_attention_cascade_rejects_bad_group_arguments() -> None:
    q = torch.randn(2, 8, 64, device=DEV, dtype=torch.bfloat16)
    kc = torch.randn(64, 8, 64, device=DEV, dtype=torch.bfloat16)
    table = torch.zeros(2, 64, dtype=torch.int32, device=DEV)
    i64 = {"device": DEV, "dtype": torch.int64}
    args = [torch.empty_like(q), q, kc, kc, table, torch.arange(2, **i64), torch.full((2,), 3, **i64), 0.1]
    groups = [torch.zeros(2, **i64), torch.zeros(1, **i64), torch.full((1,), 2, **i64)]
    with pytest.raises(ValueError, match="max_group"):  # a group larger than the batch
        _C.decode_attention_cascade_cuda(*args, *groups, 0, 3)
    with pytest.raises(ValueError, match="is on cpu"):
        _C.decode_attention_cascade_cuda(*args, groups[0].cpu(), *groups[1:], 0, 2)
    with pytest.raises(ValueError, match="split_count needs shared_splits"):  # no blocks launched to count
        _C.decode_attention_cascade_cuda(*args, *groups, 0, 2, 0, torch.ones(1, **i64))


@pytest.mark.parametrize("dtype", [*HALF_TYPES, torch.float32])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64)])
@pytest.mark.parametrize(
    "ext,prefix",
    [
        ([17], [0]),
        ([1, 300, 64, 65], [0, 0, 0, 0]),
        ([5, 70, 1, 33, 129], [0, 17, 300, 64, 4000]),
        ([4096], [0]),
        ([100], [32000]),
    ],
    ids=["one", "ragged-no-prefix", "ragged-prefix", "4k", "prefix-32k"],
)
def test_extend_attention_cuda_matches_reference(dtype, hq, hkv, d, ext, prefix) -> None:
    seq_lens = [e + p for e, p in zip(ext, prefix, strict=True)]
    s = sum(seq_lens) + 5
    k_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    v_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    table, rows = make_table(seq_lens, s)
    starts = torch.tensor([0, *torch.tensor(ext).cumsum(0)[:-1].tolist()], device=DEV)
    q = torch.randn(sum(ext), hq, d, device=DEV, dtype=dtype)
    lens, ext_t = torch.tensor(seq_lens, device=DEV), torch.tensor(ext, device=DEV, dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    scale = 1 / math.sqrt(d)
    _C.extend_attention_cuda(out, q, k_cache, v_cache, table, rows, lens, ext_t, starts, scale)
    expected = ref.extend_attention(
        q.float(), k_cache.float(), v_cache.float(), table, rows, lens, ext_t, starts, scale
    )
    assert_close_rel(out, expected)


@pytest.mark.parametrize(
    "kernel", ["mma16", "mma32", "wgmma", "wgmma128", "wgmma1", "wgmma_ws", "wgmma_ws64"]
)
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64)])
@pytest.mark.parametrize(
    "ext,prefix",
    [([5, 70, 1, 33, 129], [0, 17, 300, 64, 4000]), ([1000], [0]), ([200, 131], [3000, 64])],
    ids=["ragged-prefix", "1k", "prefix-unaligned"],
)
def test_extend_attention_cuda_each_kernel_matches_reference(
    monkeypatch, kernel, dtype, hq, hkv, d, ext, prefix
) -> None:
    """Every tensor-core variant, forced through LITE_SRT_EXTEND_KERNEL (read on each launch). The wgmma ones
    (overlapped with 64- or 128-key tiles, "wgmma1" not overlapped) run the sm_90a kernels where the build and
    device have them, the portable kernel elsewhere."""
    monkeypatch.setenv("LITE_SRT_EXTEND_KERNEL", kernel)
    test_extend_attention_cuda_matches_reference(dtype, hq, hkv, d, ext, prefix)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("shape", [(1, 4096), (256, 576), (7, 100)])
def test_norms_cuda_match_reference(dtype, shape) -> None:
    x = torch.randn(shape, device=DEV, dtype=dtype)
    w = torch.randn(shape[-1], device=DEV, dtype=dtype)
    out = torch.full_like(x, float("nan"))
    _C.rmsnorm_cuda(out, x, w, 1e-6)
    assert_close_rel(out, ref.rmsnorm(x.float(), w.float(), 1e-6))
    res = torch.randn_like(x)
    x_ref, res_ref = x.clone(), res.clone()
    ref.fused_add_rmsnorm(x_ref, res_ref, w, 1e-6)
    _C.fused_add_rmsnorm_cuda(x, res, w, 1e-6)
    assert_close_rel(res, res_ref)
    assert_close_rel(x, ref.rmsnorm(res_ref.float(), w.float(), 1e-6))


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("shape", [(1, 2 * 14336), (300, 2 * 1536), (5, 2 * 36)])
def test_silu_and_mul_cuda_matches_reference(dtype, shape) -> None:
    x = torch.randn(shape, device=DEV, dtype=dtype)
    out = torch.full((shape[0], shape[1] // 2), float("nan"), device=DEV, dtype=dtype)
    _C.silu_and_mul_cuda(out, x)
    assert_close_rel(out, ref.silu_and_mul(x.float()))


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64)])
def test_rope_cuda_matches_reference(dtype, is_neox, hq, hkv, d) -> None:
    t = 77
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=DEV, dtype=dtype)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, d, 2, device=DEV, dtype=torch.float32) / d)
    freqs = torch.outer(torch.arange(8192, device=DEV, dtype=torch.float32), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    positions = torch.randint(0, 8192, (t,), device=DEV)
    q_ref, k_ref = q.float().clone(), k.float().clone()
    ref.rotary_embedding(positions, q_ref, k_ref, cache, is_neox)
    _C.rotary_embedding_cuda(positions, q, k, cache, is_neox)
    assert_close_rel(q, q_ref)
    assert_close_rel(k, k_ref)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("decode", [True, False], ids=["decode", "extend"])
def test_attention_and_store_take_strided_qkv_views(dtype, decode) -> None:
    """The model hands q/k/v as views of one qkv projection output (row stride (hq + 2 hkv) * d), without a
    contiguous copy: store and attention must read through the strides."""
    hq, hkv, d = 32, 8, 128
    seq_lens = [300, 17, 1025] if decode else [400, 90]
    ext = [1] * len(seq_lens) if decode else [50, 90]
    t = sum(ext)
    s = sum(seq_lens) + 3
    k_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    v_cache = torch.randn(s, hkv, d, device=DEV, dtype=dtype)
    table, rows = make_table(seq_lens, s)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=DEV, dtype=dtype)
    q, k, v = (x.view(t, -1, d) for x in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    assert not q.is_contiguous()
    # the new tokens' slots: the last `ext` positions of each request
    new_slots = torch.cat(
        [table[r, n - e : n].long() for r, n, e in zip(rows.tolist(), seq_lens, ext, strict=True)]
    )
    _C.store_kv_cuda(k_cache, v_cache, new_slots, k, v)
    assert torch.equal(k_cache[new_slots], k.contiguous()) and torch.equal(v_cache[new_slots], v.contiguous())
    lens = torch.tensor(seq_lens, device=DEV)
    scale = 1 / math.sqrt(d)
    out = torch.full((t, hq, d), float("nan"), device=DEV, dtype=dtype)
    if decode:
        _C.decode_attention_cuda(out, q, k_cache, v_cache, table, rows, lens, scale)
        expected = ref.decode_attention(q.float(), k_cache.float(), v_cache.float(), table, rows, lens, scale)
    else:
        ext_t = torch.tensor(ext, device=DEV, dtype=torch.int32)
        starts = torch.tensor([0, *torch.tensor(ext).cumsum(0)[:-1].tolist()], device=DEV)
        _C.extend_attention_cuda(out, q, k_cache, v_cache, table, rows, lens, ext_t, starts, scale)
        expected = ref.extend_attention(
            q.float(), k_cache.float(), v_cache.float(), table, rows, lens, ext_t, starts, scale
        )
    assert_close_rel(out, expected)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_store_kv_cuda_writes_slots_and_skips_padding(dtype) -> None:
    s, t, hkv, d = 4096, 300, 8, 128
    k_cache = torch.full((s, hkv, d), float("nan"), device=DEV, dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    k, v = torch.randn(t, hkv, d, device=DEV, dtype=dtype), torch.randn(t, hkv, d, device=DEV, dtype=dtype)
    slots = torch.randperm(s, device=DEV)[:t]
    slots[::7] = -1
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ref.store_kv(k_ref, v_ref, slots, k, v)
    _C.store_kv_cuda(k_cache, v_cache, slots, k, v)
    assert torch.equal(k_cache.isnan(), k_ref.isnan())
    assert torch.equal(torch.nan_to_num(k_cache), torch.nan_to_num(k_ref))
    assert torch.equal(torch.nan_to_num(v_cache), torch.nan_to_num(v_ref))


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("hq,hkv,d,strided", [(32, 8, 128, True), (9, 3, 64, True), (4, 4, 6, False)])
def test_rope_store_kv_cuda_equals_rope_then_store(dtype, is_neox, hq, hkv, d, strided) -> None:
    """The fused kernel does exactly what RoPE followed by the KV store does, bit for bit: q and k rotated in
    place, rotated k and v in their slots, padded entries (slot -1) leave the pool untouched. Covers the strided
    q/k/v views the model passes and a head size whose rows are not 16-byte aligned (the scalar v copy)."""
    t, s = 77, 1000
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=DEV, dtype=dtype)
    if strided:
        q, k, v = (x.view(t, -1, d) for x in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    else:
        q, k, v = (x.contiguous().view(t, -1, d) for x in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, d, 2, device=DEV, dtype=torch.float32) / d)
    freqs = torch.outer(torch.arange(8192, device=DEV, dtype=torch.float32), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    positions = torch.randint(0, 8192, (t,), device=DEV)
    slots = torch.randperm(s, device=DEV)[:t]
    slots[::5] = -1
    pools = [torch.full((s, hkv, d), float("nan"), device=DEV, dtype=dtype) for _ in range(4)]
    q2, k2 = q.clone(), k.clone()
    _C.rotary_embedding_cuda(positions, q2, k2, cache, is_neox)
    _C.store_kv_cuda(pools[0], pools[1], slots, k2, v)
    _C.rope_store_kv_cuda(positions, q, k, v, cache, is_neox, pools[2], pools[3], slots)
    assert torch.equal(q, q2) and torch.equal(k, k2)
    for fused, two_step in ((pools[2], pools[0]), (pools[3], pools[1])):
        assert torch.equal(fused.isnan(), two_step.isnan())
        assert torch.equal(torch.nan_to_num(fused), torch.nan_to_num(two_step))
    assert not pools[2][slots[slots >= 0]].isnan().any()


def test_cuda_ops_reject_cpu_tensors() -> None:
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="GPU"):
        _C.rmsnorm_cuda(torch.empty_like(x), x, torch.randn(64), 1e-6)


# ---------------------------------------------------------------- small-batch GEMV (linear layers at decode)

GEMV_KS = [64, 576, 4096, 14336]
GEMV_NS = [1, 7, 576, 4096, 49152]


def _gemv_out(m: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((m, n), float("nan"), device=DEV, dtype=dtype)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("n", GEMV_NS)
@pytest.mark.parametrize("k", GEMV_KS)
@pytest.mark.parametrize("m", [1, 2, 3, 8])
def test_gemv_cuda_matches_reference_with_and_without_bias_and_fused(dtype, m, k, n) -> None:
    w = torch.randn(n, k, device=DEV, dtype=dtype) / math.sqrt(k)
    bias = torch.randn(n, device=DEV, dtype=dtype)
    x = torch.randn(m, k, device=DEV, dtype=dtype)
    for b in (None, bias):
        out = _gemv_out(m, n, dtype)
        _C.gemv_cuda(out, x, w, b, False)
        assert_close_rel(out, ref.linear(x.float(), w.float(), None if b is None else b.float()))
    gate_up = torch.randn(m, 2 * k, device=DEV, dtype=dtype)
    out = _gemv_out(m, n, dtype)
    _C.gemv_cuda(out, gate_up, w, bias, True)
    assert_close_rel(out, ref.silu_mul_linear(gate_up.float(), w.float(), bias.float()))


@pytest.mark.parametrize("variant", ["1", "2", "4"])
@pytest.mark.parametrize("m", [1, 5, 8])
def test_gemv_cuda_every_launch_shape_matches_reference(monkeypatch, variant, m) -> None:
    """Each rows-per-warp shape, forced through LITE_SRT_GEMV_VARIANT (read on each launch), on a K that
    spans several x tiles and a partial last chunk, and an N that leaves the last block partly empty."""
    monkeypatch.setenv("LITE_SRT_GEMV_VARIANT", variant)
    k, n = 14336 + 8 * 37, 4096 + 13
    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / math.sqrt(k)
    gate_up = torch.randn(m, 2 * k, device=DEV, dtype=torch.bfloat16)
    out = _gemv_out(m, n, torch.bfloat16)
    _C.gemv_cuda(out, gate_up, w, None, True)
    assert_close_rel(out, ref.silu_mul_linear(gate_up.float(), w.float()))


def test_gemv_cuda_reads_strided_rows_and_writes_strided_out() -> None:
    k, n = 576, 1000
    w = torch.randn(n, k, device=DEV, dtype=torch.float16)
    x = torch.randn(4, k + 64, device=DEV, dtype=torch.float16)[:, :k]  # row stride 640
    out_buf = torch.full((4, n + 24), float("nan"), device=DEV, dtype=torch.float16)
    _C.gemv_cuda(out_buf[:, :n], x, w, None, False)
    assert_close_rel(out_buf[:, :n], ref.linear(x.float(), w.float()))
    assert out_buf[:, n:].isnan().all(), "gemv wrote past the end of an output row"


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_kernels_linear_dispatch_matches_f_linear_on_gpu(monkeypatch, dtype) -> None:
    from lite_srt import kernels

    monkeypatch.setattr(kernels, "_GEMV_ENABLED", True)  # LITE_SRT_GEMV=1
    monkeypatch.setattr(kernels, "_GEMV_MAX_ROWS", 8)  # LITE_SRT_GEMV_MAX_ROWS=8: native up to 8 rows
    monkeypatch.setattr(kernels, "_GEMV_FUSED", True)  # LITE_SRT_GEMV_FUSED=1

    w = torch.randn(4096, 1024, device=DEV, dtype=dtype) / 32
    bias = torch.randn(4096, device=DEV, dtype=dtype)
    w_down = torch.randn(4096, 512, device=DEV, dtype=dtype) / 32
    for shape in [(1, 1024), (2, 3, 1024), (8, 1024), (9, 1024), (300, 1024)]:  # native and torch row counts
        x = torch.randn(shape, device=DEV, dtype=dtype)
        out = kernels.linear(x, w, bias)
        assert out.shape == (*shape[:-1], 4096)
        assert_close_rel(out, ref.linear(x.float(), w.float(), bias.float()))
        gate_up = torch.randn(*shape[:-1], 1024, device=DEV, dtype=dtype)
        fused = kernels.silu_mul_linear(gate_up, w_down)
        assert fused.shape == (*shape[:-1], 4096)
        assert_close_rel(fused, ref.silu_mul_linear(gate_up.float(), w_down.float()))


def test_kernels_linear_runs_native_gemv_only_when_eligible(monkeypatch) -> None:
    from lite_srt import kernels

    monkeypatch.setattr(kernels, "_GEMV_ENABLED", True)  # what LITE_SRT_GEMV=1 sets at import
    monkeypatch.setattr(kernels, "_GEMV_PICKS", set())
    calls: list[bool] = []
    real = _C.gemv_cuda
    monkeypatch.setattr(_C, "gemv_cuda", lambda *args: (calls.append(args[-1]), real(*args))[1])
    w = torch.randn(256, 64, device=DEV, dtype=torch.bfloat16)
    kernels.linear(torch.randn(1, 64, device=DEV, dtype=torch.bfloat16), w)
    kernels.linear(torch.randn(3, 64, device=DEV, dtype=torch.bfloat16), w)  # above the default row limit
    assert calls == [False]
    kernels.silu_mul_linear(torch.randn(1, 128, device=DEV, dtype=torch.bfloat16), w)  # two steps by default
    assert calls == [False, False]
    monkeypatch.setattr(kernels, "_GEMV_MAX_ROWS", 8)
    monkeypatch.setattr(kernels, "_GEMV_FUSED", True)
    kernels.linear(torch.randn(3, 64, device=DEV, dtype=torch.bfloat16), w)
    kernels.silu_mul_linear(torch.randn(1, 128, device=DEV, dtype=torch.bfloat16), w)
    assert calls == [False, False, False, True]
    kernels.linear(torch.randn(9, 64, device=DEV, dtype=torch.bfloat16), w)  # too many rows
    kernels.linear(torch.randn(2, 64, device=DEV), w.float())  # float32
    kernels.linear(torch.randn(2, 60, device=DEV, dtype=torch.bfloat16), w[:, :60])  # K % 8 != 0, strided
    kernels.linear(torch.randn(64, 2, device=DEV, dtype=torch.bfloat16).t(), w)  # x not contiguous
    monkeypatch.setattr(kernels, "_GEMV_ENABLED", False)  # what LITE_SRT_GEMV=0 sets at import
    kernels.linear(torch.randn(1, 64, device=DEV, dtype=torch.bfloat16), w)
    assert calls == [False, False, False, True]


def test_kernels_linear_follows_the_startup_picks(monkeypatch) -> None:
    """In auto mode one-row products run natively exactly for the picked (N, K) shapes."""
    from lite_srt import kernels

    monkeypatch.setattr(kernels, "_GEMV_ENABLED", False)
    monkeypatch.setattr(kernels, "_GEMV_PICKS", {(256, 64)})
    calls: list[tuple[int, ...]] = []
    real = _C.gemv_cuda
    monkeypatch.setattr(_C, "gemv_cuda", lambda *args: (calls.append(tuple(args[2].shape)), real(*args))[1])
    picked = torch.randn(256, 64, device=DEV, dtype=torch.bfloat16)
    other = torch.randn(128, 64, device=DEV, dtype=torch.bfloat16)
    x = torch.randn(1, 64, device=DEV, dtype=torch.bfloat16)
    assert_close_rel(kernels.linear(x, picked), ref.linear(x.float(), picked.float()))
    kernels.linear(x, other)
    kernels.linear(torch.randn(2, 64, device=DEV, dtype=torch.bfloat16), picked)  # two rows: torch
    assert calls == [(256, 64)]


def test_startup_tuning_times_a_real_decode_step_and_installs_the_winner(dummy_runner, monkeypatch) -> None:
    """A model runner on the GPU times its batch-1 decode graph both ways before capturing the serving graphs,
    and kernels.linear then follows the faster path for every linear shape of the model."""
    from lite_srt import kernels
    from lite_srt.engine.gemv_tuning import gemv_shapes

    monkeypatch.setattr(kernels, "_GEMV_MODE", "auto")
    monkeypatch.setattr(kernels, "_GEMV_PICKS", set())
    cfg = {
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 512,
        "torch_dtype": "bfloat16",
    }
    runner = dummy_runner(cfg, 256, device="cuda", max_total_tokens=512, cuda_graph_max_bs=8)
    choice = runner.gemv_choice
    assert choice is not None and choice.native_ms > 0 and choice.cublas_ms > 0
    shapes = gemv_shapes(runner.model)
    assert len(shapes) == 5
    assert kernels._GEMV_PICKS == (shapes if choice.native else set())


def test_gemv_cuda_rejects_bad_arguments() -> None:
    w = torch.randn(32, 64, device=DEV, dtype=torch.bfloat16)
    x = torch.randn(2, 64, device=DEV, dtype=torch.bfloat16)
    out = torch.empty(2, 32, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="1 to 8"):
        _C.gemv_cuda(torch.empty(9, 32, device=DEV, dtype=torch.bfloat16), x.repeat(5, 1)[:9], w, None, False)
    with pytest.raises(ValueError, match="multiple of 8"):
        _C.gemv_cuda(out, x[:, :60], w[:, :60].contiguous(), None, False)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        _C.gemv_cuda(out.float(), x.float(), w.float(), None, False)
    with pytest.raises(TypeError, match="weight"):
        _C.gemv_cuda(out, x, w.half(), None, False)
    with pytest.raises(ValueError, match="expected 128"):
        _C.gemv_cuda(out, x, w, None, True)  # fused needs x of width 2K
    with pytest.raises(ValueError, match="bias"):
        _C.gemv_cuda(out, x, w, torch.randn(31, device=DEV, dtype=torch.bfloat16), False)
    with pytest.raises(ValueError, match="aligned"):
        _C.gemv_cuda(out, torch.randn(2, 65, device=DEV, dtype=torch.bfloat16)[:, 1:], w, None, False)
    with pytest.raises(ValueError, match="GPU"):
        _C.gemv_cuda(out, x.cpu(), w, None, False)


# ---------------------------------------------------------------- programmatic dependent launch (csrc/launch.cuh)


def test_pdl_is_on_for_hopper_and_off_by_env() -> None:
    """The default build (sm_80 and sm_90a) launches with PDL on sm_90+ devices; LITE_SRT_PDL=0 turns it off."""
    import subprocess
    import sys

    from lite_srt import kernels

    hopper = torch.cuda.get_device_capability()[0] >= 9
    if os.environ.get("LITE_SRT_PDL", "1") != "0":
        assert kernels.pdl_enabled(torch.device(DEV)) == hopper
    probe = "import torch; from lite_srt import kernels; print(kernels.pdl_enabled(torch.device('cuda')))"
    env = {**os.environ, "LITE_SRT_PDL": "0"}
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_dependent_kernel_chain_replayed_in_a_graph_matches_step_by_step() -> None:
    """Twenty dependent launches (norm -> GEMV -> split decode attention + merge -> GEMV -> silu, four times)
    captured in one CUDA graph. Under PDL each kernel starts before its producer has finished, so one that read
    its input or wrote its output before pdl_wait() would mix in the previous replay's values. Every replay on
    fresh inputs must equal, bit for bit, the same kernels run one at a time with a sync after each."""
    k, hq, hkv, d, ctx = 4096, 32, 8, 128, 1000
    dt = torch.bfloat16
    norm_w = torch.rand(k, device=DEV, dtype=dt) + 0.5
    w_q = torch.randn(k, k, device=DEV, dtype=dt) / math.sqrt(k)
    w_up = torch.randn(2 * k, k, device=DEV, dtype=dt) / math.sqrt(k)
    k_cache = torch.randn(ctx + 8, hkv, d, device=DEV, dtype=dt)
    v_cache = torch.randn(ctx + 8, hkv, d, device=DEV, dtype=dt)
    table, rows = make_table([ctx], ctx + 8)
    lens = torch.tensor([ctx], device=DEV)
    x = torch.zeros(1, k, device=DEV, dtype=dt)

    def chain(sync: bool) -> torch.Tensor:
        def step(fn, *args) -> None:
            fn(*args)
            if sync:
                torch.cuda.synchronize()

        h = x
        for _ in range(4):
            n = torch.empty_like(h)
            step(_C.rmsnorm_cuda, n, h, norm_w, 1e-5)
            q = torch.empty(1, k, device=DEV, dtype=dt)
            step(_C.gemv_cuda, q, n, w_q, None, False)
            att = torch.empty(1, hq, d, device=DEV, dtype=dt)
            step(
                _C.decode_attention_cuda, att, q.view(1, hq, d), k_cache, v_cache, table, rows, lens, d**-0.5
            )
            up = torch.empty(1, 2 * k, device=DEV, dtype=dt)
            step(_C.gemv_cuda, up, att.view(1, k), w_up, None, False)
            h = torch.empty(1, k, device=DEV, dtype=dt)
            step(_C.silu_and_mul_cuda, h, up)
        return h

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(sync=False)  # warm-up outside capture (kernel attributes, workspace)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(sync=False)
    for _ in range(5):
        x.copy_(torch.randn(1, k, device=DEV, dtype=dt))
        graph.replay()
        torch.cuda.synchronize()
        expected = chain(sync=True)
        assert torch.equal(out, expected), "a graph replay differs from the synchronized chain"
