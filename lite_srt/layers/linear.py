"""Tensor-parallel linear layers and embeddings, and how each loads its slice of a checkpoint tensor.

- ColumnParallelLinear: this rank's output rows. Merged projections (q|k|v, gate|up) are several checkpoint
  tensors, each contributing a span of rows; no communication (the next layer consumes the local slice).
- RowParallelLinear: this rank's input columns; the partial products are summed over ranks (all-reduce).
- VocabParallelEmbedding: this rank's vocabulary rows; tokens outside them embed to zeros, then all-reduce.
- ParallelLMHead: logits for this rank's vocabulary rows, all-gathered into the full vocabulary.

With tp 1 every span is the whole dimension and no collective runs, so the single-GPU path is the same code.
Each layer's `load(kind, shard, src, ckpt_name)` reads only its slice from the source (see loader/sources.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lite_srt import kernels
from lite_srt.distributed.group import TPGroup
from lite_srt.distributed.partition import Span, split
from lite_srt.errors import ShapeMismatchError
from lite_srt.loader.sources import WeightSource


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


def copy_slice(ckpt_name: str, dst: torch.Tensor, src: WeightSource, dim: int, span: Span | None) -> None:
    """dst <- the span of `dim` of src (all of src when span is None), checking both shapes."""
    full = tuple(src.shape)
    want = list(dst.shape)
    if span is not None:
        want[dim] = span.total
    if full != tuple(want):
        raise ShapeMismatchError(
            f"tensor {ckpt_name!r} has shape {full}, but the model expects {tuple(want)}"
        )
    data = src.read() if span is None or span.size == span.total else src.read(dim, span.start, span.size)
    dst.copy_(data.to(dst.dtype))


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b over this rank's rows of the concatenated shards (shard name -> rows of its tensor)."""

    def __init__(self, in_features: int, spans: dict[str | None, Span], bias: bool) -> None:
        super().__init__()
        self.shards: dict[str | None, tuple[int, Span]] = {}
        offset = 0
        for name, span in spans.items():
            self.shards[name] = (offset, span)
            offset += span.size
        self.weight = _param(offset, in_features)
        self.bias = _param(offset) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)

    def load(self, kind: str, shard: str | None, src: WeightSource, ckpt_name: str) -> None:
        offset, span = self.shards[shard]
        dst = getattr(self, kind).data.narrow(0, offset, span.size)
        copy_slice(ckpt_name, dst, src, 0, span)


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x_rank W_rank^T, where x_rank is this rank's span of the input features."""

    def __init__(self, in_span: Span, out_features: int, tp: TPGroup) -> None:
        super().__init__()
        self.in_span, self.tp = in_span, tp
        self.weight = _param(out_features, in_span.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(kernels.linear(x, self.weight))

    def forward_silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """forward(silu(gate) * up) for gate_up = [gate | up] (the SwiGLU down projection)."""
        return self.tp.all_reduce(kernels.silu_mul_linear(gate_up, self.weight))

    def load(self, kind: str, shard: str | None, src: WeightSource, ckpt_name: str) -> None:
        copy_slice(ckpt_name, self.weight.data, src, 1, self.in_span)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, tp: TPGroup) -> None:
        super().__init__()
        self.tp = tp
        self.span = split(vocab_size, tp.rank, tp.size)
        self.part_sizes = [split(vocab_size, r, tp.size).size for r in range(tp.size)]
        self.weight = _param(self.span.size, hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.span.start
        outside = (local < 0) | (local >= self.span.size)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(out.masked_fill_(outside.unsqueeze(-1), 0.0))

    def load(self, kind: str, shard: str | None, src: WeightSource, ckpt_name: str) -> None:
        copy_slice(ckpt_name, self.weight.data, src, 0, self.span)


class ParallelLMHead(nn.Module):
    """Logits over the full vocabulary from this rank's vocabulary rows (its own, or the tied embedding's)."""

    def __init__(self, embedding: VocabParallelEmbedding, tied: bool) -> None:
        super().__init__()
        self.tp, self.span, self.part_sizes = embedding.tp, embedding.span, embedding.part_sizes
        # a tuple, so the embedding is not registered twice as a submodule
        self.tied_to = (embedding,) if tied else ()
        self.weight = None if tied else _param(*embedding.weight.shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = self.tied_to[0].weight if self.tied_to else self.weight
        return self.tp.all_gather_cols(kernels.linear(h, w), self.part_sizes)

    def load(self, kind: str, shard: str | None, src: WeightSource, ckpt_name: str) -> None:
        assert self.weight is not None  # the mapper skips lm_head.weight of tied models
        copy_slice(ckpt_name, self.weight.data, src, 0, self.span)
