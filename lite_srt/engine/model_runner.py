"""ModelRunner: loads the model, owns the KV pool buffers and the req->token table, runs forward + sample.

Ownership: constructed on the event-loop thread; afterwards `step()` runs only on the forward thread (the GPU
thread on a GPU machine), one batch at a time. The scheduler (event loop) owns all bookkeeping (allocator, prefix
cache, table rows); the forward thread touches only the tensors of the batch it was handed and the contents of
the KV buffers and table rows that batch names.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from lite_srt.config import ServerArgs
from lite_srt.engine.forward_batch import ForwardBatch
from lite_srt.engine.sampler import SamplingBatch, sample
from lite_srt.loader import iter_weights, resolve_load_format
from lite_srt.loader.model_config import ModelConfig
from lite_srt.mem.kv_pool import KVPool
from lite_srt.mem.req_table import ReqToTokenTable
from lite_srt.models.registry import model_class
from lite_srt.models.weights import init_dummy_weights

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Without --max-total-tokens, a CPU engine gives the KV pool this many bytes.
_CPU_KV_BYTES = 2 << 30
_GPU_MEM_FRACTION = 0.85


@dataclass
class StepResult:
    """What one forward step returns to the scheduler, already on the CPU."""

    next_token_ids: list[int]  # one per sampled row
    logprobs: list[float] | None
    top_logprob_ids: list[list[int]] | None
    top_logprob_vals: list[list[float]] | None
    forward_s: float


def resolve_dtype(args: ServerArgs, cfg: ModelConfig, device: str) -> torch.dtype:
    if args.dtype != "auto":
        return _DTYPES[args.dtype]
    if device == "cpu":
        return torch.float32  # CPU matmuls in half precision are slow and inexact
    return _DTYPES.get(cfg.torch_dtype, torch.bfloat16) if cfg.torch_dtype != "float32" else torch.bfloat16


class ModelRunner:
    def __init__(self, args: ServerArgs, cfg: ModelConfig, model_path: str, context_length: int) -> None:
        self.args = args
        self.device = torch.device(args.resolved_device)
        self.dtype = resolve_dtype(args, cfg, self.device.type)
        if context_length > cfg.max_position_embeddings:
            cfg = dataclasses.replace(cfg, max_position_embeddings=context_length)
        self.cfg = cfg
        self.context_length = context_length
        self.model = self._load_model(model_path)
        self.pool = self._make_pool()
        # Extra rows beyond max_running_requests: a chunked prefill and shared n>1 prompts hold rows too.
        self.table = ReqToTokenTable(args.max_running_requests * 2 + 16, context_length + 1, self.device)

    def _load_model(self, model_path: str) -> torch.nn.Module:
        t0 = time.perf_counter()
        fmt = resolve_load_format(model_path, self.args.load_format)
        cls = model_class(self.cfg)
        with torch.device(self.device):
            prev = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)
            try:
                model = cls(self.cfg)
            finally:
                torch.set_default_dtype(prev)
        if fmt == "dummy":
            init_dummy_weights(model, self.args.seed)
        else:
            model.load_weights(iter_weights(model_path, fmt))
        model.eval()
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        logger.info(
            "loaded %s (%s, %.1f MB, %s on %s) in %.1f s",
            self.cfg.architecture,
            fmt,
            nbytes / 1e6,
            str(self.dtype).replace("torch.", ""),
            self.device,
            time.perf_counter() - t0,
        )
        return model

    def _kv_bytes_budget(self) -> int:
        if self.device.type == "cpu":
            return _CPU_KV_BYTES
        free, total = torch.cuda.mem_get_info(self.device)
        frac = self.args.mem_fraction_static or _GPU_MEM_FRACTION
        used = total - free
        return max(int(total * frac) - used, 0)

    def _make_pool(self) -> KVPool:
        cfg, page = self.cfg, self.args.page_size
        if self.args.max_total_tokens is not None:
            slots = -(-self.args.max_total_tokens // page) * page
        else:
            slots = KVPool.slots_for_bytes(
                self._kv_bytes_budget(),
                cfg.num_hidden_layers,
                cfg.num_key_value_heads,
                cfg.head_dim,
                self.dtype,
                page,
            )
        if slots < page:
            raise RuntimeError(
                "no memory is left for the KV cache: raise --mem-fraction-static or set --max-total-tokens"
            )
        return KVPool(
            cfg.num_hidden_layers, slots, cfg.num_key_value_heads, cfg.head_dim, self.dtype, self.device
        )

    @torch.inference_mode()
    def step(self, batch: ForwardBatch, sample_rows: list[int], sampling: SamplingBatch | None) -> StepResult:
        """Forward the batch and sample the rows in `sample_rows` (indices into the batch's requests)."""
        t0 = time.perf_counter()
        logits = self.model(batch, self.pool)
        if not sample_rows or sampling is None:
            return StepResult([], None, None, None, time.perf_counter() - t0)
        if len(sample_rows) != logits.shape[0]:
            logits = logits[torch.tensor(sample_rows, device=logits.device)]
        out = sample(logits, sampling)
        return StepResult(
            next_token_ids=out.next_token_ids.tolist(),
            logprobs=out.logprobs.tolist() if out.logprobs is not None else None,
            top_logprob_ids=out.top_logprob_ids.tolist() if out.top_logprob_ids is not None else None,
            top_logprob_vals=out.top_logprob_vals.tolist() if out.top_logprob_vals is not None else None,
            forward_s=time.perf_counter() - t0,
        )
