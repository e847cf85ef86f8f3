"""The batch-1 decode step in one persistent kernel (csrc/fused/decode_step.cu), for Llama-architecture models on
Hopper.

At batch 1 a decode step streams every weight once, and separate kernels leave HBM idle at each of their ~200
boundaries and through the latency-bound pieces between the GEMVs (norms, RoPE, attention). The fused kernel keeps
one weight stream running through the whole step: embedding, every layer, the final norm and the LM head, with
the same bf16 roundings as the unfused path. It also leaves the logits' argmax (the greedy token) in `token` and
in the request's row of the runner's next-token table, so a plain greedy step skips the sampler (ModelRunner.launch);
any other step samples the logits as before and overwrites that row.

Where it applies: one request, one GPU (tp 1), bf16 weights and KV cache, head_dim 128, up to 4 query heads per
KV head, no per-head q/k norm, hidden and head sizes the kernel's 16 KB slots take (`unsupported_reason`), and
up to `max_keys` (2048) keys. The CUDA graph runner captures it for batch size 1 beside the unfused graph and
replays it when the step fits; every other step runs the unfused model.

Whether it is used: LITE_SRT_FUSED_DECODE unset or auto: the model runner times the batch-1 step both ways at
startup, at TIMING_KEYS keys, and keeps the faster (`choose`), like the one-row GEMV choice (gemv_tuning.py). The
answer differs by GPU: with Llama-3.1-8B the fused step wins on an H100 (runner 5.53-5.63 ms per step against
6.42) and loses on an H200 (5.09 against 4.88, where the unfused step's tuned GEMVs are faster;
docs/BENCHMARKS.md, session 19). =1: whenever supported; =0: never (A/B runs).

Ownership: built on the event-loop thread at startup; called only by the forward thread (inside graph capture
and replay). Its buffers (logits, workspace, counters) belong to it alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lite_srt import kernels
from lite_srt.engine.forward_batch import ForwardBatch
from lite_srt.engine.gemv_tuning import best_alternating
from lite_srt.mem.kv_pool import KVPool
from lite_srt.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

_MODE = os.environ.get("LITE_SRT_FUSED_DECODE", "auto")
HEAD_DIM = 128


TIMING_KEYS = (
    1024  # the context the startup choice times at: attention, not the weights, tells the paths apart
)


def mode() -> str:
    """'auto' (timed at startup, the default), '1' (on whenever supported) or '0' (off)."""
    return _MODE if _MODE in ("0", "1") else "auto"


def unsupported_reason(model: nn.Module, pool: KVPool, tp_size: int) -> str | None:
    """None when the fused step can run this model on this device, else why not (logged at startup)."""
    if not isinstance(model, LlamaForCausalLM):
        return "not a Llama-architecture model"
    cfg, layers = model.config, model.layers
    if tp_size != 1:
        return "tensor parallelism"
    if pool.device.type != "cuda" or torch.version.hip is not None:
        return "not an NVIDIA GPU"
    if not kernels.has_native("fused_decode", "cuda"):
        return "the extension has no fused decode kernel"
    if cfg.qk_norm:
        return "per-head q/k RMSNorm (Qwen3)"
    if cfg.head_dim != HEAD_DIM:
        return f"head_dim {cfg.head_dim} (the kernel takes {HEAD_DIM})"
    if pool.dtype != torch.bfloat16 or any(p.dtype != torch.bfloat16 for p in model.parameters()):
        return "weights or KV cache not bfloat16"
    attn = layers[0].self_attn
    if attn.rotary.cos_sin_cache.shape[-1] != HEAD_DIM:
        return "partial rotary embedding"
    from lite_srt import _C  # type: ignore[attr-defined]  # present: has_native checked it

    why = _C.fused_decode_unsupported_cuda(
        cfg.hidden_size, cfg.intermediate_size, attn.hq, attn.hkv, HEAD_DIM
    )
    if why:
        return why
    if not _C.fused_decode_available_cuda(pool.device.index or 0):
        return "needs a compute capability 9.x GPU and a build with sm_90a code"
    return None


@dataclass
class FusedDecodeChoice:
    fused_ms: float  # batch-1 decode step (CUDA graph) through the fused kernel
    unfused_ms: float  # the same step through the model's kernels

    @property
    def fused(self) -> bool:
        return self.fused_ms < self.unfused_ms


class FusedDecodeStep:
    """Callable on a one-request decode ForwardBatch: returns its logits [1, vocab] (float32) and leaves their
    argmax in `token` [1] (int64) and, given a `token_table`, at the request's row of it."""

    def __init__(self, model: nn.Module, pool: KVPool, token_table: torch.Tensor | None = None) -> None:
        from lite_srt import _C  # type: ignore[attr-defined]

        self._op = _C.fused_decode_cuda
        cfg = model.config
        dev = pool.device
        attn0 = model.layers[0].self_attn
        self.hq, self.hkv = attn0.hq, attn0.hkv
        self.inter = cfg.intermediate_size
        self.eps = float(cfg.rms_norm_eps)
        self.scale = float(attn0.attn.scale)
        self.neox = bool(attn0.rotary.is_neox)
        self.cos_sin = attn0.rotary.cos_sin_cache
        self.embed = model.embed_tokens.weight
        head = model.lm_head
        self.lm_head = head.tied_to[0].weight if head.tied_to else head.weight
        self.final_norm = model.norm.weight
        rows = []
        for i, layer in enumerate(model.layers):
            a, mlp = layer.self_attn, layer.mlp
            bias = a.qkv_proj.bias
            rows.append(
                [
                    a.qkv_proj.weight.data_ptr(),
                    0 if bias is None else bias.data_ptr(),
                    a.o_proj.weight.data_ptr(),
                    mlp.gate_up_proj.weight.data_ptr(),
                    mlp.down_proj.weight.data_ptr(),
                    layer.input_layernorm.weight.data_ptr(),
                    layer.post_attention_layernorm.weight.data_ptr(),
                    pool.k_buffers[i].data_ptr(),
                    pool.v_buffers[i].data_ptr(),
                ]
            )
        # The tensors whose addresses the table holds stay referenced by the model and the pool.
        self.layers = torch.tensor(rows, dtype=torch.int64, device=dev)
        ws_bytes, n_counters = _C.fused_decode_sizes_cuda(
            len(rows), cfg.hidden_size, self.inter, self.hq, self.hkv
        )
        self.workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
        self.counters = torch.zeros(n_counters, dtype=torch.int32, device=dev)
        self.logits = torch.empty(self.embed.shape[0], dtype=torch.float32, device=dev)
        self.token = torch.zeros(1, dtype=torch.int64, device=dev)
        self.token_table = token_table
        self.max_keys = int(_C.fused_decode_max_keys)  # longer contexts replay the unfused graph

    @classmethod
    def create(
        cls, model: nn.Module, pool: KVPool, tp_size: int, token_table: torch.Tensor | None = None
    ) -> FusedDecodeStep | None:
        """The step for this model, or None (with the reason logged) where it does not apply or is turned off.
        token_table: the runner's per-request next-token table, which the step's greedy token also goes to."""
        if mode() == "0":
            return None
        why = unsupported_reason(model, pool, tp_size)
        if why is not None:
            logger.info("fused batch-1 decode kernel: not used (%s)", why)
            return None
        return cls(model, pool, token_table)

    def __call__(self, fb: ForwardBatch) -> torch.Tensor:
        assert fb.batch_size == 1 and fb.input_ids is not None
        self._op(
            self.logits, self.token, self.token_table, self.layers, self.embed, self.final_norm, self.lm_head,
            fb.input_ids, fb.positions, fb.out_cache_loc, fb.req_pool_indices, fb.seq_lens, fb.req_to_token,
            self.cos_sin, self.workspace, self.counters, self.hq, self.hkv, self.inter, self.eps, self.scale,
            self.neox,
        )  # fmt: skip
        return self.logits.view(1, -1)


def choose(time_step_ms: Callable[[bool], float]) -> FusedDecodeChoice | None:
    """Times the batch-1 decode step with the fused kernel on and off (`time_step_ms(fused)`), alternating, and
    returns both; None when LITE_SRT_FUSED_DECODE forces the answer (nothing is timed)."""
    if mode() != "auto":
        return None
    best = best_alternating(time_step_ms)
    choice = FusedDecodeChoice(best[True], best[False])
    logger.info(
        "batch-1 decode step: %.3f ms fused, %.3f ms unfused; using the %s kernel(s)",
        choice.fused_ms,
        choice.unfused_ms,
        "fused" if choice.fused else "unfused",
    )
    return choice
