"""Kernel entry points used by the model code.

Each function dispatches to the compiled `lite_srt._C` op for the tensors' device when the extension has it,
else to the torch reference in `reference.py`. Without the extension the package still works, with one warning.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from lite_srt.kernels import reference as ref

logger = logging.getLogger(__name__)

try:  # the compiled extension is optional: CI without a compiler and fresh checkouts still import
    from lite_srt import _C  # type: ignore[attr-defined]
except ImportError as e:  # pragma: no cover - depends on the build
    _C = None
    logger.warning(
        "lite_srt._C is not built (%s); using the torch reference kernels. "
        "Build it with `pip install --no-build-isolation -e .`.",
        e,
    )

# LITE_SRT_KERNELS=reference forces the torch reference ops (A/B and debugging).
_FORCE_REF = os.environ.get("LITE_SRT_KERNELS", "") == "reference"
# Which path one-row (decode batch 1) linear layers take. LITE_SRT_GEMV=1: always the native GEMV; 0: always
# torch (cuBLAS); unset or "auto": per weight shape, whichever the model runner timed faster at startup
# (engine/gemv_tuning.py fills _GEMV_PICKS). Neither wins everywhere: with PDL, Llama-3.1-8B batch-1 decode
# took 6.42-6.50 ms native vs 6.57 ms cuBLAS on an H100, but 5.25-5.32 vs 4.90-4.98 ms on an H200
# (docs/BENCHMARKS.md). Read once: linear() is on the per-layer hot path.
_GEMV_MODE = os.environ.get("LITE_SRT_GEMV", "auto")
_GEMV_ENABLED = _GEMV_MODE == "1"
_GEMV_PICKS: set[tuple[int, int]] = set()  # (N, K) weight shapes for which the native GEMV was timed faster


def gemv_autotune() -> bool:
    """Whether the one-row linear path is chosen by timing (LITE_SRT_GEMV unset or "auto")."""
    return _GEMV_MODE not in ("0", "1")


def set_gemv_picks(shapes: set[tuple[int, int]]) -> None:
    """The weight shapes whose one-row products run the native GEMV from now on (the rest go to torch)."""
    _GEMV_PICKS.clear()
    _GEMV_PICKS.update(shapes)


def _native(name: str, t: torch.Tensor):
    """The compiled op `name` for t's device, or None (falls back to the reference)."""
    if _C is None or _FORCE_REF:
        return None
    suffix = "cuda" if t.is_cuda else "cpu"
    return getattr(_C, f"{name}_{suffix}", None)


def has_native(name: str, device: str) -> bool:
    return (
        _C is not None
        and not _FORCE_REF
        and hasattr(_C, f"{name}_{'cuda' if device.startswith('cuda') else 'cpu'}")
    )


def pdl_enabled(device: torch.device) -> bool:
    """Whether our CUDA kernels on `device` overlap their start with the previous kernel's end (programmatic
    dependent launch: sm_90+ and a build for it; LITE_SRT_PDL=0 turns it off). csrc/launch.cuh has the rules."""
    if device.type != "cuda" or not has_native("pdl_enabled", "cuda"):
        return False
    with torch.cuda.device(device):
        return bool(_C.pdl_enabled_cuda())


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    op = _native("rmsnorm", x)
    if op is None:
        return ref.rmsnorm(x, weight, eps)
    out = torch.empty_like(x)
    op(out, x, weight, eps)
    return out


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    op = _native("fused_add_rmsnorm", x)
    if op is None:
        ref.fused_add_rmsnorm(x, residual, weight, eps)
    else:
        op(x, residual, weight, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    op = _native("silu_and_mul", x)
    if op is None:
        return ref.silu_and_mul(x)
    out = torch.empty(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype, device=x.device)
    op(out, x)
    return out


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    op = _native("rotary_embedding", q)
    if op is None:
        ref.rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    else:
        op(positions, q, k, cos_sin_cache, is_neox)


def store_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    op = _native("store_kv", k)
    if op is None:
        ref.store_kv(k_cache, v_cache, slots, k, v)
    else:
        op(k_cache, v_cache, slots, k, v)


def rope_store_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """rotary_embedding(positions, q, k, ...) then store_kv(k_cache, v_cache, slots, k, v): one kernel on CUDA
    (one launch less per layer), the two ops elsewhere."""
    op = _native("rope_store_kv", q)
    if op is None:
        rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
        store_kv(k_cache, v_cache, slots, k, v)
    else:
        op(positions, q, k, v, cos_sin_cache, is_neox, k_cache, v_cache, slots)


# Head dims the compiled attention kernels are built for; others use the reference.
_NATIVE_HEAD_DIMS = (64, 128)


def cascade_shared_splits(
    device: torch.device, q_heads: int, kv_heads: int, num_groups: int, max_group: int, max_shared: int
) -> int:
    """Splits of a cascade's shared keys that an eager launch picks for a step's groups on `device` (captured
    graphs launch a fixed number of blocks and read this count from a device buffer each step)."""
    if device.type != "cuda" or not has_native("decode_cascade_splits", "cuda"):
        return 1
    with torch.cuda.device(device):
        return int(_C.decode_cascade_splits_cuda(q_heads, kv_heads, num_groups, max_group, max_shared))


def decode_split_plan(
    device: torch.device, q_heads: int, kv_heads: int, batch: int, total_keys: int, max_keys: int
) -> tuple[int, int, int]:
    """(one-wave splits, keys per split, grid splits) of the decode kernel for a batch with these key counts on
    `device`; a graph runner replays its balanced graph when the grid splits exceed the one-wave count."""
    if device.type != "cuda" or not has_native("decode_split_plan", "cuda"):
        return 1, 1, 1
    with torch.cuda.device(device):
        return tuple(
            int(v) for v in _C.decode_split_plan_cuda(q_heads, kv_heads, batch, total_keys, max_keys)
        )


def _native_attention(name: str, q: torch.Tensor):
    return _native(name, q) if q.shape[-1] in _NATIVE_HEAD_DIMS else None


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


# The decode kernel merges its key splits itself: the last block of each (request, KV head) to finish merges,
# counted on a zeroed int32 buffer that every launch leaves zeroed again (csrc/attention/attention.h). One buffer
# per device, because a process runs one forward at a time per device (tensor-parallel ranks are processes).
# Buffers are never freed: a captured graph keeps using the address it was captured with.
# LITE_SRT_FUSED_MERGE=0 runs the separate merge kernel instead (A/B runs).
_FUSED_MERGE = os.environ.get("LITE_SRT_FUSED_MERGE", "1") != "0"
_MERGE_COUNTERS: dict[int, torch.Tensor] = {}
_RETIRED_COUNTERS: list[torch.Tensor] = []
_MIN_COUNTERS = 1 << 16


def _merge_counters(q: torch.Tensor) -> torch.Tensor | None:
    """The device's split-merge counters, enough for q's rows x heads (>= rows x KV heads x head chunks)."""
    if not _FUSED_MERGE:
        return None
    need = q.shape[0] * q.shape[1]
    buf = _MERGE_COUNTERS.get(q.device.index)
    if buf is None or buf.numel() < need:
        if buf is not None:
            _RETIRED_COUNTERS.append(buf)
        buf = torch.zeros(max(need, _MIN_COUNTERS), dtype=torch.int32, device=q.device)
        _MERGE_COUNTERS[q.device.index] = buf
    return buf


def decode_attention(
    q,
    k_cache,
    v_cache,
    req_to_token,
    req_pool_indices,
    seq_lens,
    scale: float,
    cascade=None,
    out=None,
    keys=None,
) -> torch.Tensor:
    """`cascade` (a prefix_groups.CascadeBatch) names rows sharing a prefix: the CUDA kernel reads each group's
    shared keys once. `keys` (a forward_batch.DecodeKeys) lets the CUDA kernel give long requests more key splits.
    The result is the same attention; ops without these paths ignore them. `out` (contiguous, q's shape) receives
    the result when given."""
    op = _native_attention("decode_attention", q)
    if op is None:
        return _into(
            out, ref.decode_attention(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale)
        )
    out = torch.empty_like(q) if out is None else out
    cascade_op = _native_attention("decode_attention_cascade", q) if cascade is not None else None
    balance = (keys.total, keys.max, keys.chunk) if keys is not None else (0, 0, None)
    if cascade_op is not None:
        c = cascade
        cascade_op(
            out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale,
            c.shared_lens, c.group_start, c.group_size, c.max_shared, c.max_group, c.shared_splits,
            c.split_count, _merge_counters(q), *balance,
        )  # fmt: skip
    else:
        extra = (_merge_counters(q), *balance) if q.is_cuda else ()
        op(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, *extra)
    return out


def extend_attention(
    q,
    k_cache,
    v_cache,
    req_to_token,
    req_pool_indices,
    seq_lens,
    extend_lens,
    extend_start_loc,
    scale: float,
    out=None,
) -> torch.Tensor:
    args = (q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_lens, extend_start_loc)
    op = _native_attention("extend_attention", q)
    if op is None:
        return _into(out, ref.extend_attention(*args, scale))
    out = torch.empty_like(q) if out is None else out
    op(out, *args, scale)
    return out


# ---- linear layers: the native GEMV for decode-sized batches, torch (cuBLAS / CPU BLAS) otherwise

# The fused silu_and_mul + down projection kernel is opt-in (LITE_SRT_GEMV_FUSED=1): on an H100 at one row it
# measured 53 us for Llama-3.1-8B's down projection against 48 us for silu_and_mul + the plain GEMV, because
# every block recomputes silu over all of K while staging its input.
_GEMV_FUSED = os.environ.get("LITE_SRT_GEMV_FUSED", "0") == "1"
# The kernel takes 1..8 activation rows (csrc/ops/gemv.h), but on an H100 it beats cuBLAS only at one row:
# from 2 rows its CUDA-core FMAs cost more than the extra rows save (M=8: 2-3x slower than cuBLAS, which stays
# at copy bandwidth there; scripts/bench_gemv.py). LITE_SRT_GEMV_MAX_ROWS raises the limit for A/B runs.
_GEMV_MAX_ROWS = max(1, min(8, int(os.environ.get("LITE_SRT_GEMV_MAX_ROWS", "1"))))
_GEMV_DTYPES = (torch.float16, torch.bfloat16)


def _gemv_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, in_width: int):
    """The native GEMV when it applies to these tensors, else None (the caller uses torch).

    It applies to CUDA fp16/bf16 inference with at most _GEMV_MAX_ROWS rows of a contiguous x of width in_width,
    a contiguous [N, K] weight with K % 8 == 0, and 16-byte aligned data (the kernel reads 16-byte packs).
    """
    if not x.is_cuda or x.dtype not in _GEMV_DTYPES:
        return None
    if not _GEMV_ENABLED and (weight.shape[0], weight.shape[-1]) not in _GEMV_PICKS:
        return None
    op = _native("gemv", x)
    if op is None or weight.dtype != x.dtype or weight.dim() != 2 or not weight.is_contiguous():
        return None
    k = weight.shape[1]
    if k == 0 or k % 8 != 0 or x.dim() == 0 or x.shape[-1] != in_width or not x.is_contiguous():
        return None
    if not 1 <= x.numel() // in_width <= _GEMV_MAX_ROWS:
        return None
    if x.data_ptr() % 16 != 0 or weight.data_ptr() % 16 != 0:
        return None
    if bias is not None and (bias.dtype != x.dtype or bias.dim() != 1 or not bias.is_contiguous()):
        return None
    # The native op has no backward; keep autograd working where someone trains or checks gradients.
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    return op


def _gemv(op, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fuse: bool) -> torch.Tensor:
    n = weight.shape[0]
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    op(out.view(-1, n), x.view(-1, x.shape[-1]), weight, bias, fuse)
    return out


def native_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T through the native GEMV whatever LITE_SRT_GEMV says (the startup timing's candidate)."""
    op = _native("gemv", x)
    if op is None:
        raise RuntimeError("the native GEMV needs a CUDA build of lite_srt._C")
    return _gemv(op, x, weight, None, fuse=False)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear semantics: x [..., K] @ weight[N, K]^T (+ bias) -> [..., N].

    Decode-sized CUDA batches (up to _GEMV_MAX_ROWS rows) run the native GEMV, which streams the weight at
    near copy bandwidth; everything else (prefill, CPU, fp32, odd layouts) goes to torch.
    """
    op = _gemv_op(x, weight, bias, weight.shape[-1])
    if op is None:
        return F.linear(x, weight, bias)
    return _gemv(op, x, weight, bias, fuse=False)


def silu_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(silu_and_mul(x), weight, bias) for x [..., 2K] (gate | up) and weight [N, K].

    With LITE_SRT_GEMV_FUSED=1 the native GEMV computes silu(gate) * up while staging its input (one launch,
    no intermediate tensor); otherwise, and where the GEMV does not apply, the two steps run.
    """
    op = _gemv_op(x, weight, bias, 2 * weight.shape[-1]) if _GEMV_FUSED else None
    if op is None:
        return linear(silu_and_mul(x), weight, bias)
    return _gemv(op, x, weight, bias, fuse=True)
