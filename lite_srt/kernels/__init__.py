"""Kernel entry points used by the model code.

Each function dispatches to the compiled `lite_srt._C` op for the tensors' device when the extension has it,
else to the torch reference in `reference.py`. Without the extension the package still works, with one warning.
"""

from __future__ import annotations

import logging
import os

import torch

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


# Head dims the compiled attention kernels are built for; others use the reference.
_NATIVE_HEAD_DIMS = (64, 128)


def _native_attention(name: str, q: torch.Tensor):
    return _native(name, q) if q.shape[-1] in _NATIVE_HEAD_DIMS else None


def decode_attention(
    q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale: float
) -> torch.Tensor:
    op = _native_attention("decode_attention", q)
    if op is None:
        return ref.decode_attention(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale)
    out = torch.empty_like(q)
    op(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale)
    return out


def extend_attention(
    q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_lens, extend_start_loc, scale: float
) -> torch.Tensor:
    op = _native_attention("extend_attention", q)
    if op is None:
        return ref.extend_attention(
            q,
            k_cache,
            v_cache,
            req_to_token,
            req_pool_indices,
            seq_lens,
            extend_lens,
            extend_start_loc,
            scale,
        )
    out = torch.empty_like(q)
    op(
        out,
        q,
        k_cache,
        v_cache,
        req_to_token,
        req_pool_indices,
        seq_lens,
        extend_lens,
        extend_start_loc,
        scale,
    )
    return out
