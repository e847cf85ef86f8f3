"""Mixed prefill+decode steps: the attention layer sends prefill rows to the extend kernel and decode rows to the
decode kernel (forward_batch.MixedSplit). The result must equal attending the whole batch as one extend.

Runs on the CPU ops everywhere; the CUDA case runs where a CUDA build of lite_srt._C is present (marked `gpu`).
"""

from __future__ import annotations

import pytest
import torch

from lite_srt import kernels
from lite_srt.engine.forward_batch import DecodeKeys, ForwardBatch, ForwardMode
from lite_srt.engine.prefix_groups import find_groups
from lite_srt.kernels import reference as ref
from lite_srt.layers import attention as attention_mod
from lite_srt.layers.attention import PagedAttention
from lite_srt.mem.kv_pool import KVPool

HQ, HKV, D = 8, 2, 64


def _devices() -> list:
    cuda = pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                not (torch.cuda.is_available() and kernels.has_native("decode_attention", "cuda")),
                reason="needs CUDA and a CUDA build of lite_srt._C",
            ),
        ],
    )
    return ["cpu", cuda]


def _mixed_batch(device: str, prefills: list[tuple[int, int]], decode_lens: list[int]):
    """prefills: (cached prefix, new tokens) per request; decode_lens: context of each decode row after this
    step. Returns the batch (table rows and slots disjoint) and the number of new tokens."""
    rows = len(prefills) + len(decode_lens)
    width = max([p + n for p, n in prefills] + decode_lens)
    table = torch.zeros(rows, width, dtype=torch.int32)
    next_slot, seq_lens, ext, loc = 0, [], [], []
    for row, (total, new) in enumerate([(p + n, n) for p, n in prefills] + [(n, 1) for n in decode_lens]):
        slots = torch.randperm(total) + next_slot  # scattered within the request's range
        next_slot += total
        table[row, :total] = slots.to(torch.int32)
        seq_lens.append(total)
        ext.append(new)
        loc.append(slots[total - new :])
    positions = [i for total, new in zip(seq_lens, ext) for i in range(total - new, total)]
    fb = ForwardBatch.build(
        ForwardMode.EXTEND,
        [0] * len(positions),
        positions,
        torch.cat(loc).long(),
        list(range(rows)),
        seq_lens,
        ext,
        table.to(device),
        torch.device(device),
    )
    n_dec = len(decode_lens)
    fb.set_gather(
        list(range(len(positions) - n_dec, len(positions))), list(range(len(prefills), rows)), device
    )
    return fb, next_slot


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize(
    "prefills,decode_lens",
    [([(0, 37), (70, 20)], [5, 130, 1, 64]), ([(300, 129)], [257] * 9), ([], [12, 40])],
    ids=["two-chunks", "long-prefix", "decodes-only"],
)
def test_mixed_step_splits_rows_and_matches_one_extend(device, prefills, decode_lens, monkeypatch) -> None:
    torch.manual_seed(0)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    fb, slots = _mixed_batch(device, prefills, decode_lens)
    assert fb.mixed is not None and fb.mixed.prefill_tokens == sum(n for _, n in prefills)
    # The decode half's key counts, from the host lengths: what balances its key splits on a GPU.
    assert fb.mixed.decode_keys == DecodeKeys(sum(decode_lens), max(decode_lens))
    pool = KVPool(1, slots, HKV, D, dtype, device)
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    t = fb.num_tokens
    q, k, v = (torch.randn(t, h, D, dtype=dtype, device=device) for h in (HQ, HKV, HKV))
    layer = PagedAttention(0, HQ, HKV, D)

    calls: list[str] = []
    for name in ("decode_attention", "extend_attention"):
        real = getattr(kernels, name)
        monkeypatch.setattr(
            kernels, name, lambda *a, _r=real, _n=name, **kw: calls.append(_n) or _r(*a, **kw)
        )
    out = layer(q, k, v, fb, pool)
    # Both halves ran, each on its own kernel (no extend call when the step has no prefill rows).
    assert calls == (["extend_attention"] if prefills else []) + ["decode_attention"]

    expected = ref.extend_attention(
        q.float(),
        pool.k_buffers[0].float(),
        pool.v_buffers[0].float(),
        fb.req_to_token,
        fb.req_pool_indices,
        fb.seq_lens,
        fb.extend_lens,
        fb.extend_start_loc,
        layer.scale,
    ).reshape(t, HQ * D)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    err = ((out.float() - expected).abs().max() / expected.abs().max()).item()
    assert err <= tol, f"max relative error {err:.3g}"
    if device == "cuda":  # balanced key splits: with 32 keys per split the longer decode rows split more
        monkeypatch.setenv("LITE_SRT_DECODE_MIN_KEYS", "32")
        balanced = layer(q, k, v, fb, pool)
        monkeypatch.delenv("LITE_SRT_DECODE_MIN_KEYS")
        err = ((balanced.float() - expected).abs().max() / expected.abs().max()).item()
        assert err <= tol, f"balanced splits: max relative error {err:.3g}"

    # The A/B switch sends the whole batch to the extend kernel, with the same result.
    monkeypatch.setattr(attention_mod, "_SPLIT_MIXED", False)
    calls.clear()
    whole = layer(q, k, v, fb, pool)
    assert calls == ["extend_attention"]
    err = ((whole.float() - expected).abs().max() / expected.abs().max()).item()
    assert err <= tol, f"max relative error {err:.3g}"


def test_a_step_without_decodes_has_no_split() -> None:
    fb = ForwardBatch.build(
        ForwardMode.EXTEND, [1, 2, 3], [0, 1, 2], torch.arange(3), [0], [3], [3], torch.zeros(1, 4), "cpu"
    )
    assert fb.mixed is None and fb.decode_keys is None


def test_a_decode_step_carries_its_key_counts() -> None:
    fb = ForwardBatch.build(
        ForwardMode.DECODE, None, [4, 9], torch.arange(2), [0, 1], [5, 10], [1, 1], torch.zeros(2, 16), "cpu"
    )
    assert fb.decode_keys == DecodeKeys(15, 10) and fb.decode_keys.chunk is None


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.has_native("decode_attention_cascade", "cuda")),
    reason="needs CUDA and a CUDA build of lite_srt._C",
)
def test_mixed_step_decode_half_takes_cascade_groups() -> None:
    """Six decode rows, the first four sharing a 512-token prefix (one cascade group), beside a prefill chunk:
    the decode half runs the cascade kernels and still equals one extend over the whole batch."""
    torch.manual_seed(0)
    fb, slots = _mixed_batch("cuda", [(100, 50)], [600, 610, 620, 630, 300, 77])
    table = fb.req_to_token
    table[1:5, :512] = table[1, :512].clone()  # rows 1-4 (decodes 0-3) hold the same slots for 512 positions
    own = [table[r, : int(fb.seq_lens[r])].tolist() for r in range(1, 7)]
    groups = find_groups(own, [512, 512, 512, 512, 0, 0])
    assert groups is not None and groups.sizes == [4] and groups.shared_lens[0] == 512
    fb.cascade = groups.to_device(torch.device("cuda"))
    pool = KVPool(1, slots, HKV, D, torch.bfloat16, "cuda")
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    t = fb.num_tokens
    q, k, v = (torch.randn(t, h, D, dtype=torch.bfloat16, device="cuda") for h in (HQ, HKV, HKV))
    layer = PagedAttention(0, HQ, HKV, D)
    out = layer(q, k, v, fb, pool)
    expected = ref.extend_attention(
        q.float(), pool.k_buffers[0].float(), pool.v_buffers[0].float(), table, fb.req_pool_indices,
        fb.seq_lens, fb.extend_lens, fb.extend_start_loc, layer.scale,
    ).reshape(t, HQ * D)  # fmt: skip
    err = ((out.float() - expected).abs().max() / expected.abs().max()).item()
    assert err <= 1e-2, f"max relative error {err:.3g}"
