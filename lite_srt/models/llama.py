"""The Llama family: Llama 2/3/3.1/3.2, SmolLM2, TinyLlama, Mistral, Qwen2 (qkv bias), Qwen3 (q/k RMSNorm).

One module reads like the architecture: embedding -> N x (RMSNorm, GQA attention with RoPE, RMSNorm, SwiGLU MLP)
-> RMSNorm -> LM head (optionally tied to the embedding). q/k/v and gate/up are merged into single matmuls;
`load_weights` maps the checkpoint's separate tensors onto their shards.

Tensor parallelism (Megatron-style): q/k/v and gate/up are column-parallel (a rank holds whole heads and a span
of the intermediate rows), o_proj and down_proj row-parallel (one all-reduce each per layer), the embedding and
LM head vocabulary-parallel. With tp 1 the spans are whole and no collective runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lite_srt import kernels
from lite_srt.distributed.group import TPGroup
from lite_srt.distributed.partition import Span, split, split_heads
from lite_srt.engine.forward_batch import ForwardBatch
from lite_srt.layers.attention import PagedAttention
from lite_srt.layers.linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from lite_srt.layers.rotary import RotaryEmbedding
from lite_srt.loader.model_config import ModelConfig
from lite_srt.mem.kv_pool import KVPool
from lite_srt.models.weights import WeightMapper


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Without residual: (norm(x), x). With residual: residual += x in place, returns (norm(residual), residual)."""
        if residual is None:
            return kernels.rmsnorm(x, self.weight, self.eps), x
        x = x.contiguous()
        kernels.fused_add_rmsnorm(x, residual, self.weight, self.eps)
        return x, residual


def _rows(heads: Span, d: int) -> Span:
    return Span(heads.start * d, heads.size * d, heads.total * d)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, tp: TPGroup) -> None:
        super().__init__()
        heads = split_heads(cfg.num_attention_heads, cfg.num_key_value_heads, tp.rank, tp.size)
        self.hq, self.hkv, self.d = heads.q.size, heads.kv.size, cfg.head_dim
        q_rows, kv_rows = _rows(heads.q, self.d), _rows(heads.kv, self.d)
        self.qkv_proj = ColumnParallelLinear(
            cfg.hidden_size, {"q": q_rows, "k": kv_rows, "v": kv_rows}, bias=cfg.attention_bias
        )
        self.o_proj = RowParallelLinear(q_rows, cfg.hidden_size, tp)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.rotary = RotaryEmbedding(self.d, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.attn = PagedAttention(layer_id, self.hq, self.hkv, self.d)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        t = x.shape[0]
        q, k, v = qkv.split([self.hq * self.d, self.hkv * self.d, self.hkv * self.d], dim=-1)
        q = q.reshape(t, self.hq, self.d)
        k = k.reshape(t, self.hkv, self.d)
        v = v.reshape(t, self.hkv, self.d)
        if self.q_norm is not None and self.k_norm is not None:  # Qwen3: per-head RMSNorm before RoPE
            q = self.q_norm(q.contiguous())[0]
            k = self.k_norm(k.contiguous())[0]
        # q/k/v stay strided views of qkv: RoPE, the KV store and attention take row/head strides, and copying
        # them contiguous cost 0.23 ms of a 7.2 ms decode step at batch 48 (H200, docs/BENCHMARKS.md).
        # RoPE runs inside the attention layer, fused with the KV store.
        return self.o_proj(self.attn(q, k, v, batch, pool, self.rotary))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup) -> None:
        super().__init__()
        inter = split(cfg.intermediate_size, tp.rank, tp.size)
        self.gate_up_proj = ColumnParallelLinear(cfg.hidden_size, {"gate": inter, "up": inter}, bias=False)
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj.forward_silu_mul(self.gate_up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, tp: TPGroup) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_id, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, tp)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, batch: ForwardBatch, pool: KVPool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, batch, pool)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment -> (merged parameter name fragment, shard)
    stacked_params = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", "gate"),
        "up_proj": ("gate_up_proj", "up"),
    }

    def __init__(self, cfg: ModelConfig, tp: TPGroup | None = None) -> None:
        super().__init__()
        tp = tp or TPGroup.single()
        self.config = cfg
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, tp) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = ParallelLMHead(self.embed_tokens, tied=cfg.tie_word_embeddings)
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def num_local_kv_heads(self) -> int:
        """KV heads this rank stores (the KV pool is sized by them)."""
        return self.layers[0].self_attn.hkv

    def forward(self, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """Logits (float32) of each request's last token in the batch: [B, vocab]."""
        return self.compute_logits(self.final_hidden(batch, pool))

    def final_hidden(self, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """The final-norm hidden state of each request's last token: [B, hidden]. Everything but the LM head,
        whose vocabulary all-gather is the one collective a tensor-parallel CUDA graph cannot hold."""
        x = self.embed_tokens(batch.input_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            x, residual = layer(x, residual, batch, pool)
        idx = batch.logits_indices
        assert residual is not None  # at least one layer ran
        h, _ = self.norm(x[idx], residual[idx])
        return h

    def compute_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        mapper = WeightMapper(self, self.stacked_params, hf_prefix="model.")
        mapper.load_all(weights)
        mapper.check_complete(optional=set())
