"""Torch reference implementations of every lite_srt kernel.

These define the semantics the C++/CUDA kernels in csrc/ must reproduce, and they are the test oracle
(run in float32). Shapes:
  T = tokens in the batch (ragged, flattened), B = requests, Hq/Hkv = query/KV heads, D = head dim,
  S = KV slots in the pool. The pool stores K and V per layer as [S, Hkv, D]. `req_to_token[r, i]` is the
  slot of position i of request row r (int32). Slot -1 in `slots` marks a padded entry to skip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (out * weight.float()).to(x.dtype)


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """In place: residual += x; x = rmsnorm(residual) * weight."""
    residual.add_(x)
    x.copy_(rmsnorm(residual, weight, eps))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate | up) -> silu(gate) * up: [T, I]."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d].float()).mul(x[..., d:].float()).to(x.dtype)


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    """In place RoPE on q [T, Hq, D] and k [T, Hkv, D]. cos_sin_cache: [max_pos, D] float32 = cos(D/2) | sin(D/2).

    neox: rotate halves (x[:D/2], x[D/2:]); interleaved (GPT-J): rotate pairs (x[2i], x[2i+1]).
    """
    cs = cos_sin_cache.index_select(0, positions.long())
    half = cs.shape[-1] // 2
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    for t in (q, k):
        tf = t.float()
        if is_neox:
            x1, x2 = tf[..., :half], tf[..., half:]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = tf[..., 0::2], tf[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        t.copy_(out.to(t.dtype))


def store_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """k_cache/v_cache: [S, Hkv, D]; slots: [T] int64; k/v: [T, Hkv, D]. Entries with slot < 0 are skipped."""
    keep = slots >= 0
    idx = slots[keep].long()
    k_cache[idx] = k[keep].to(k_cache.dtype)
    v_cache[idx] = v[keep].to(v_cache.dtype)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal_offset: int | None
) -> torch.Tensor:
    """q [n, Hq, D], k/v [m, Hkv, D] -> [n, Hq, D] in float32. Query i sees keys j <= causal_offset + i."""
    hq, hkv = q.shape[1], k.shape[1]
    group = hq // hkv
    qf = q.float().transpose(0, 1)  # Hq, n, D
    kf = k.float().transpose(0, 1).repeat_interleave(group, 0)  # Hq, m, D
    vf = v.float().transpose(0, 1).repeat_interleave(group, 0)
    s = torch.matmul(qf, kf.transpose(1, 2)) * scale  # Hq, n, m
    if causal_offset is not None:
        n, m = q.shape[0], k.shape[0]
        qi = torch.arange(n, device=q.device)[:, None] + causal_offset
        kj = torch.arange(m, device=q.device)[None, :]
        s = s.masked_fill(kj > qi, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.matmul(p, vf).transpose(0, 1)  # n, Hq, D


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per request. q: [B, Hq, D]; request b attends to slots req_to_token[rpi[b], :seq_lens[b]]."""
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        slots = req_to_token[int(req_pool_indices[b]), :n].long()
        out[b] = _attend(q[b : b + 1], k_cache[slots], v_cache[slots], scale, None)[0].to(q.dtype)
    return out


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Ragged prefill with a cached prefix. q: [T, Hq, D]; request b owns rows
    [extend_start_loc[b], + extend_lens[b]), which are its positions [seq_lens[b] - extend_lens[b], seq_lens[b]).
    Their K/V are already stored in the pool; each query attends causally to all positions up to its own."""
    out = torch.empty_like(q)
    for b in range(req_pool_indices.shape[0]):
        n_ext, n_all, start = int(extend_lens[b]), int(seq_lens[b]), int(extend_start_loc[b])
        if n_ext == 0:
            continue
        slots = req_to_token[int(req_pool_indices[b]), :n_all].long()
        qb = q[start : start + n_ext]
        out[start : start + n_ext] = _attend(qb, k_cache[slots], v_cache[slots], scale, n_all - n_ext).to(
            q.dtype
        )
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T (+ bias [N]) -> [..., N], summed in float32 (the GEMV's semantics)."""
    out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return out.to(x.dtype)


def silu_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(silu_and_mul(x), weight, bias) for x [..., 2K] (gate | up): the fused down projection."""
    return linear(silu_and_mul(x), weight, bias)
