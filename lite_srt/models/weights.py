"""Weight loading by mapping: merged parameters know their shards, and one mapper routes checkpoint tensors.

A checkpoint tensor `model.layers.3.self_attn.k_proj.weight` lands in the `k` rows of
`layers.3.self_attn.qkv_proj.weight` (under tensor parallelism: this rank's rows of it, read as a slice); every
copy checks the shape and names the tensor when it does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lite_srt.errors import ModelLoadError
from lite_srt.layers.linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_slice,
)
from lite_srt.loader.sources import TensorSource, WeightSource

# Checkpoint tensors that carry no weights we use (precomputed rope tables in old checkpoints).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


Shardable = ColumnParallelLinear | RowParallelLinear | VocabParallelEmbedding | ParallelLMHead


class WeightMapper:
    """Routes (checkpoint name, source) pairs to parameters; parallel layers read only their slices."""

    def __init__(self, model: nn.Module, stacked: dict[str, tuple[str, str]], hf_prefix: str) -> None:
        self.model = model
        self.stacked = stacked
        self.hf_prefix = hf_prefix
        self.params = dict(model.named_parameters())
        self.modules = dict(model.named_modules())
        self.loaded: set[str] = set()  # (param name) or (param name, shard) keys

    def load_all(self, weights: Iterable[tuple[str, torch.Tensor | WeightSource]]) -> None:
        for name, w in weights:
            self.load_one(name, TensorSource(w) if isinstance(w, torch.Tensor) else w)

    def load_one(self, ckpt_name: str, src: WeightSource) -> None:
        if ckpt_name.endswith(_IGNORED_SUFFIXES):
            return
        name = ckpt_name[len(self.hf_prefix) :] if ckpt_name.startswith(self.hf_prefix) else ckpt_name
        if name == "lm_head.weight" and "lm_head.weight" not in self.params:
            return  # tied embeddings: some checkpoints still store the (identical) head
        shard: str | None = None
        for frag, (merged, merged_shard) in self.stacked.items():
            if f".{frag}." in name:
                name, shard = name.replace(f".{frag}.", f".{merged}."), merged_shard
                break
        module_name, _, kind = name.rpartition(".")
        module = self.modules.get(module_name)
        if name not in self.params or (shard is not None and not isinstance(module, ColumnParallelLinear)):
            raise ModelLoadError(
                f"checkpoint tensor {ckpt_name!r} matches no parameter of {type(self.model).__name__}"
            )
        if isinstance(module, Shardable):
            module.load(kind, shard, src, ckpt_name)
        else:  # replicated on every rank (norms)
            copy_slice(ckpt_name, self.params[name].data, src, 0, None)
        self.loaded.add(name if shard is None else f"{name}#{shard}")

    def expected(self) -> set[str]:
        keys: set[str] = set()
        for name in self.params:
            module = self.modules.get(name.rsplit(".", 1)[0])
            if isinstance(module, ColumnParallelLinear) and None not in module.shards:
                keys.update(f"{name}#{s}" for s in module.shards)
            else:
                keys.add(name)
        return keys

    def check_complete(self, optional: set[str]) -> None:
        missing = sorted(self.expected() - self.loaded - optional)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelLoadError(f"checkpoint is missing weights for {len(missing)} parameter(s): {shown}")


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights for benchmarks: small uniform values keep activations finite; norms are ones."""
    for i, (name, p) in enumerate(model.named_parameters()):
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        else:
            gen = torch.Generator(device=p.device).manual_seed(seed + i)
            p.data.uniform_(-0.02, 0.02, generator=gen)
