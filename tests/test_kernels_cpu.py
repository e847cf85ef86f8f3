"""CPU kernels of lite_srt._C against the float32 torch reference (lite_srt/kernels/reference.py).

Every output is poisoned with NaN before the kernel runs, so an element the kernel forgets to write fails.
float32 must match within 1e-5 (relative to the output's magnitude); bf16/fp16 within 1e-2 of the float32
reference computed from the same (rounded) inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from lite_srt.kernels import reference as ref

_C = pytest.importorskip(
    "lite_srt._C", reason="lite_srt._C is not built: pip install --no-build-isolation -e ."
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def assert_close_rel(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    out, expected = out.float(), expected.float()
    assert not torch.isnan(out).any(), "kernel left NaN (unwritten or poisoned) elements"
    scale = expected.abs().max().clamp_min(1e-6)
    err = ((out - expected).abs().max() / scale).item()
    assert err <= TOL[dtype], f"max error {err:.3g} relative to max |ref| exceeds {TOL[dtype]} for {dtype}"


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


# ---------------------------------------------------------------- norms, activation


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 576), (33, 128), (2, 3, 64)])
@pytest.mark.parametrize("weight_fp32", [False, True])
def test_rmsnorm_matches_reference(dtype: torch.dtype, shape: tuple[int, ...], weight_fp32: bool) -> None:
    x = torch.randn(shape, dtype=dtype) * 3
    w = torch.randn(shape[-1], dtype=torch.float32 if weight_fp32 else dtype)
    out = poisoned_like(x)
    _C.rmsnorm_cpu(out, x, w, 1e-6)
    assert_close_rel(out, ref.rmsnorm(x.float(), w.float(), 1e-6), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 40])
def test_fused_add_rmsnorm_updates_residual_and_x_in_place(dtype: torch.dtype, rows: int) -> None:
    x, res, w = (
        torch.randn(rows, 576, dtype=dtype),
        torch.randn(rows, 576, dtype=dtype),
        torch.randn(576, dtype=dtype),
    )
    x_ref, res_ref = x.clone(), res.clone()
    ref.fused_add_rmsnorm(x_ref, res_ref, w, 1e-5)  # in dtype: rounds the sum like the kernel must
    _C.fused_add_rmsnorm_cpu(x, res, w, 1e-5)
    assert_close_rel(res, res_ref, dtype)
    assert_close_rel(x, ref.rmsnorm(res_ref.float(), w.float(), 1e-5), dtype)


def test_rmsnorm_reads_strided_rows() -> None:
    big = torch.randn(8, 256)
    x = big[:, :128]  # rows of 128 with a row stride of 256
    w = torch.randn(128)
    out = poisoned_like(x)
    _C.rmsnorm_cpu(out, x, w, 1e-6)
    assert_close_rel(out, ref.rmsnorm(x, w, 1e-6), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2 * 1536), (17, 2 * 64)])
def test_silu_and_mul_matches_reference(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    x = torch.randn(shape, dtype=dtype) * 4
    out = torch.full((shape[0], shape[1] // 2), float("nan"), dtype=dtype)
    _C.silu_and_mul_cpu(out, x)
    assert_close_rel(out, ref.silu_and_mul(x.float()), dtype)


# ---------------------------------------------------------------- rope, store


def cos_sin_cache(max_pos: int, d: int, base: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (32, 8, 128)])
@pytest.mark.parametrize("pos_dtype", [torch.int64, torch.int32])
def test_rope_matches_reference_on_qkv_views(
    dtype: torch.dtype, is_neox: bool, hq: int, hkv: int, d: int, pos_dtype: torch.dtype
) -> None:
    t = 23
    qkv = torch.randn(t, (hq + 2 * hkv) * d, dtype=dtype)
    q = qkv[:, : hq * d].view(t, hq, d)  # strided views, as the model slices a fused QKV projection
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    positions = torch.randint(0, 4000, (t,), dtype=pos_dtype)
    cache = cos_sin_cache(4096, d)
    q_ref, k_ref = q.float().clone(), k.float().clone()
    v_before = qkv[:, (hq + hkv) * d :].clone()
    ref.rotary_embedding(positions, q_ref, k_ref, cache, is_neox)
    _C.rotary_embedding_cpu(positions, q, k, cache, is_neox)
    assert_close_rel(q, q_ref, dtype)
    assert_close_rel(k, k_ref, dtype)
    assert torch.equal(qkv[:, (hq + hkv) * d :], v_before), "rope wrote outside q and k"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_store_kv_writes_slots_and_skips_padding(dtype: torch.dtype, slot_dtype: torch.dtype) -> None:
    s, t, hkv, d = 64, 10, 3, 64
    k_cache = torch.full((s, hkv, d), float("nan"), dtype=dtype)
    v_cache = torch.full((s, hkv, d), float("nan"), dtype=dtype)
    k, v = torch.randn(t, hkv, d, dtype=dtype), torch.randn(t, hkv, d, dtype=dtype)
    slots = torch.randperm(s)[:t].to(slot_dtype)
    slots[3] = -1
    slots[7] = -1
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ref.store_kv(k_ref, v_ref, slots.long(), k, v)
    _C.store_kv_cpu(k_cache, v_cache, slots, k, v)
    assert torch.equal(k_cache.isnan(), k_ref.isnan()), "written slot set differs (padding must be skipped)"
    kept = slots >= 0
    assert torch.equal(k_cache[slots[kept].long()], k[kept])
    assert torch.equal(v_cache[slots[kept].long()], v[kept])


# ---------------------------------------------------------------- attention


def make_pool(s: int, hkv: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(s, hkv, d, dtype=dtype), torch.randn(s, hkv, d, dtype=dtype)


def make_table(seq_lens: list[int], s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """req_to_token with scattered slots; requests sit on shuffled rows, with one unused row."""
    rows, cols = len(seq_lens) + 1, max(seq_lens) + 3
    table = torch.full((rows, cols), -7, dtype=torch.int32)  # junk beyond seq_len must never be read
    perm = torch.randperm(s)
    row_ids = torch.randperm(rows)[: len(seq_lens)]
    used = 0
    for row, n in zip(row_ids.tolist(), seq_lens, strict=True):
        table[row, :n] = perm[used : used + n].int()
        used += n
    return table, row_ids


ATTN_SHAPES = [(4, 4, 64), (9, 3, 64), (32, 8, 128)]  # GQA ratios 1, 3, 4; both head dims


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d", ATTN_SHAPES)
@pytest.mark.parametrize("seq_lens", [[1], [17], [300], [1, 17, 300, 5, 64, 65, 129, 2]])
def test_decode_attention_matches_reference(
    dtype: torch.dtype, hq: int, hkv: int, d: int, seq_lens: list[int]
) -> None:
    s = sum(seq_lens) + 11
    k_cache, v_cache = make_pool(s, hkv, d, dtype)
    table, rows = make_table(seq_lens, s)
    lens = torch.tensor(seq_lens, dtype=torch.int64)
    q = torch.randn(len(seq_lens), hq, d, dtype=dtype)
    out = poisoned_like(q)
    scale = 1 / math.sqrt(d)
    _C.decode_attention_cpu(out, q, k_cache, v_cache, table, rows, lens, scale)
    expected = ref.decode_attention(q.float(), k_cache.float(), v_cache.float(), table, rows, lens, scale)
    assert_close_rel(out, expected, dtype)


def extend_case(ext: list[int], prefix: list[int], hq: int, hkv: int, d: int, dtype: torch.dtype):
    seq_lens = [e + p for e, p in zip(ext, prefix, strict=True)]
    s = sum(seq_lens) + 5
    k_cache, v_cache = make_pool(s, hkv, d, dtype)
    table, rows = make_table(seq_lens, s)
    starts = torch.tensor([0, *torch.tensor(ext).cumsum(0)[:-1].tolist()], dtype=torch.int64)
    q = torch.randn(sum(ext), hq, d, dtype=dtype)
    lens, ext_t = torch.tensor(seq_lens), torch.tensor(ext, dtype=torch.int32)
    return q, k_cache, v_cache, table, rows, lens, ext_t, starts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d", ATTN_SHAPES)
@pytest.mark.parametrize(
    "ext,prefix",
    [([17], [0]), ([1, 300], [0, 0]), ([5, 70, 1, 33], [0, 17, 300, 64]), ([40], [250])],
    ids=["one", "ragged-no-prefix", "ragged-prefix", "prefix"],
)
def test_extend_attention_matches_reference(
    dtype: torch.dtype, hq: int, hkv: int, d: int, ext: list[int], prefix: list[int]
) -> None:
    q, k_cache, v_cache, table, rows, lens, ext_t, starts = extend_case(ext, prefix, hq, hkv, d, dtype)
    out = poisoned_like(q)
    scale = 1 / math.sqrt(d)
    _C.extend_attention_cpu(out, q, k_cache, v_cache, table, rows, lens, ext_t, starts, scale)
    expected = ref.extend_attention(
        q.float(), k_cache.float(), v_cache.float(), table, rows, lens, ext_t, starts, scale
    )
    assert_close_rel(out, expected, dtype)


def test_dispatch_layer_uses_the_cpu_kernels() -> None:
    from lite_srt import kernels

    assert kernels.has_native("decode_attention", "cpu")
    assert kernels.has_native("extend_attention", "cpu")


# ---------------------------------------------------------------- bad arguments


def decode_args(**overrides):
    k_cache, v_cache = make_pool(40, 3, 64, torch.float32)
    table, rows = make_table([5, 9], 40)
    args = dict(
        out=torch.empty(2, 9, 64),
        q=torch.randn(2, 9, 64),
        k_cache=k_cache,
        v_cache=v_cache,
        req_to_token=table,
        req_pool_indices=rows,
        seq_lens=torch.tensor([5, 9]),
        scale=0.125,
    )
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides",
    [
        {"q": torch.randn(2, 9, 64, dtype=torch.float64)},  # unsupported dtype
        {"out": torch.empty(2, 9, 64, dtype=torch.bfloat16)},  # dtype mismatch
        {"q": torch.randn(2, 9, 32), "out": torch.empty(2, 9, 32)},  # head dim mismatch with the pool
        {"q": torch.randn(2, 8, 64), "out": torch.empty(2, 8, 64)},  # heads not a multiple of kv heads
        {"q": torch.randn(3, 9, 64), "out": torch.empty(3, 9, 64)},  # rows != requests
        {"q": torch.randn(2, 64, 9).transpose(1, 2)},  # last dim not contiguous
        {"seq_lens": torch.tensor([5.0, 9.0])},  # float lengths
        {"seq_lens": torch.tensor([5, 9, 1])},  # wrong count
        {"q": torch.randn(2, 9, 64, device="meta")},  # wrong device
        {"seq_lens": torch.tensor([5, 99])},  # longer than the table
        {"req_pool_indices": torch.tensor([0, 50])},  # row out of range
    ],
)
def test_decode_attention_rejects_bad_arguments(overrides: dict) -> None:
    with pytest.raises((TypeError, ValueError, RuntimeError, IndexError)):
        _C.decode_attention_cpu(**decode_args(**overrides))


def test_attention_rejects_slot_outside_pool() -> None:
    args = decode_args()
    args["req_to_token"][args["req_pool_indices"][0], 0] = 10_000
    with pytest.raises(IndexError, match="req_to_token"):
        _C.decode_attention_cpu(**args)


def test_other_ops_reject_bad_arguments() -> None:
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="expected 32"):
        _C.rmsnorm_cpu(torch.empty_like(x), x, torch.randn(32), 1e-6)
    with pytest.raises(TypeError, match="int32 or int64"):
        _C.store_kv_cpu(
            torch.empty(8, 2, 64),
            torch.empty(8, 2, 64),
            torch.zeros(3),
            torch.randn(3, 2, 64),
            torch.randn(3, 2, 64),
        )
    with pytest.raises(IndexError, match="slots"):
        _C.store_kv_cpu(
            torch.empty(8, 2, 64),
            torch.empty(8, 2, 64),
            torch.tensor([0, 8, 1]),
            torch.randn(3, 2, 64),
            torch.randn(3, 2, 64),
        )
    with pytest.raises(IndexError, match="cos_sin_cache"):
        _C.rotary_embedding_cpu(
            torch.tensor([0, 5000]),
            torch.randn(2, 4, 64),
            torch.randn(2, 2, 64),
            cos_sin_cache(4096, 64),
            True,
        )
    with pytest.raises(ValueError, match="even"):
        _C.silu_and_mul_cpu(torch.empty(2, 3), torch.randn(2, 7))


# ---------------------------------------------------------------- linear dispatch (CPU: always torch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64), (3, 576), (2, 5, 128), (20, 40)])
def test_linear_and_silu_mul_linear_fall_back_to_f_linear_on_cpu(
    dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    import torch.nn.functional as F

    from lite_srt import kernels

    k, n = shape[-1], 96
    x = torch.randn(shape, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    for b in (None, bias):
        out = kernels.linear(x, w, b)
        assert out.shape == (*shape[:-1], n) and out.dtype == dtype
        torch.testing.assert_close(out, F.linear(x, w, b))
    gate_up = torch.randn(*shape[:-1], 2 * k, dtype=dtype)
    fused = kernels.silu_mul_linear(gate_up, w, bias)
    torch.testing.assert_close(fused, F.linear(kernels.silu_and_mul(gate_up), w, bias))
    assert_close_rel(fused, ref.silu_mul_linear(gate_up.float(), w.float(), bias.float()), dtype)
