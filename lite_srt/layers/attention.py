"""Paged attention layer: rotate q/k and store this step's K/V into the pool, then attend through the req->token
table.

Runs on the forward thread; it writes only the pool slots named by the batch's out_cache_loc.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from lite_srt import kernels
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode, MixedSplit
from lite_srt.layers.rotary import RotaryEmbedding
from lite_srt.mem.kv_pool import KVPool

# Mixed prefill+decode steps send their decode rows to the decode kernel (LITE_SRT_SPLIT_MIXED=0: everything
# through the extend kernel, for A/B runs; docs/BENCHMARKS.md has both).
_SPLIT_MIXED = os.environ.get("LITE_SRT_SPLIT_MIXED", "1") != "0"
# RoPE and the KV store in one kernel is opt-in (LITE_SRT_FUSED_ROPE_STORE=1). On the H200 it saved 20-30 us per
# step at batch 1, 8, 32 and 48 but cost ~64 us at batch 16, between cuBLAS's split-K GEMMs, for reasons not yet
# found (scripts/bench_decode_layer.py --with-gemms; docs/BENCHMARKS.md, session 9).
_FUSED_ROPE_STORE = os.environ.get("LITE_SRT_FUSED_ROPE_STORE", "0") == "1"


class PagedAttention(nn.Module):
    def __init__(self, layer_id: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: ForwardBatch,
        pool: KVPool,
        rotary: RotaryEmbedding | None = None,
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq * D]. With `rotary`, q and k are rotated (at batch.positions)
        in the same kernel that stores k and v."""
        k_cache, v_cache = pool.k_buffers[self.layer_id], pool.v_buffers[self.layer_id]
        if rotary is not None and _FUSED_ROPE_STORE:
            kernels.rope_store_kv(
                batch.positions, q, k, v, rotary.cos_sin_cache, rotary.is_neox, k_cache, v_cache,
                batch.out_cache_loc,
            )  # fmt: skip
        else:
            if rotary is not None:
                rotary(batch.positions, q, k)
            kernels.store_kv(k_cache, v_cache, batch.out_cache_loc, k, v)
        if batch.mode is ForwardMode.DECODE:
            out = kernels.decode_attention(
                q,
                k_cache,
                v_cache,
                batch.req_to_token,
                batch.req_pool_indices,
                batch.seq_lens,
                self.scale,
                batch.cascade,
                keys=batch.decode_keys,
            )
        elif batch.mixed is not None and _SPLIT_MIXED:
            out = self._mixed(q, k_cache, v_cache, batch, batch.mixed)
        else:
            out = kernels.extend_attention(
                q,
                k_cache,
                v_cache,
                batch.req_to_token,
                batch.req_pool_indices,
                batch.seq_lens,
                batch.extend_lens,
                batch.extend_start_loc,
                self.scale,
            )
        return out.reshape(out.shape[0], self.num_heads * self.head_dim)

    def _mixed(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        m: MixedSplit,
    ) -> torch.Tensor:
        """Prefill rows through the extend kernel, decode rows through the decode kernel, into one output."""
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        t = m.prefill_tokens
        if t:
            kernels.extend_attention(
                q[:t], k_cache, v_cache, batch.req_to_token, m.req_pool_indices[0], m.seq_lens[0],
                m.extend_lens, m.extend_start_loc, self.scale, out=out[:t],
            )  # fmt: skip
        kernels.decode_attention(
            q[t:], k_cache, v_cache, batch.req_to_token, m.req_pool_indices[1], m.seq_lens[1], self.scale,
            batch.cascade, out=out[t:], keys=m.decode_keys,
        )  # fmt: skip
        return out
