"""Weight loading by mapping: merged parameters know their shards, and one mapper routes checkpoint tensors.

A checkpoint tensor `model.layers.3.self_attn.k_proj.weight` lands in the `k` rows of
`layers.3.self_attn.qkv_proj.weight`; every copy checks the shape and names the tensor when it does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lite_srt.errors import ModelLoadError, ShapeMismatchError

# Checkpoint tensors that carry no weights we use (precomputed rope tables in old checkpoints).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


class ShardedParam(nn.Linear):
    """A Linear whose output rows are the concatenation of named shards (q|k|v or gate|up)."""

    shards: dict[str, tuple[int, int]]  # shard -> (row offset, rows)

    @classmethod
    def linear(cls, in_features: int, shard_sizes: dict[str, int], bias: bool) -> ShardedParam:
        layer = cls(in_features, sum(shard_sizes.values()), bias=bias)
        offset, layer.shards = 0, {}
        for name, size in shard_sizes.items():
            layer.shards[name] = (offset, size)
            offset += size
        return layer


class WeightMapper:
    def __init__(self, model: nn.Module, stacked: dict[str, tuple[str, str]], hf_prefix: str) -> None:
        self.model = model
        self.stacked = stacked
        self.hf_prefix = hf_prefix
        self.params = dict(model.named_parameters())
        self.modules = dict(model.named_modules())
        self.loaded: set[str] = set()  # (param name) or (param name, shard) keys

    def load_all(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in weights:
            self.load_one(name, tensor)

    def load_one(self, ckpt_name: str, tensor: torch.Tensor) -> None:
        if ckpt_name.endswith(_IGNORED_SUFFIXES):
            return
        name = ckpt_name[len(self.hf_prefix) :] if ckpt_name.startswith(self.hf_prefix) else ckpt_name
        if name == "lm_head.weight" and "lm_head.weight" not in self.params:
            return  # tied embeddings: some checkpoints still store the (identical) head
        for frag, (merged, shard) in self.stacked.items():
            if f".{frag}." in name:
                self._load_shard(ckpt_name, name.replace(f".{frag}.", f".{merged}."), shard, tensor)
                return
        param = self.params.get(name)
        if param is None:
            raise ModelLoadError(
                f"checkpoint tensor {ckpt_name!r} matches no parameter of {type(self.model).__name__}"
            )
        self._copy(ckpt_name, param.data, tensor)
        self.loaded.add(name)

    def _load_shard(self, ckpt_name: str, param_name: str, shard: str, tensor: torch.Tensor) -> None:
        param = self.params.get(param_name)
        module = self.modules.get(param_name.rsplit(".", 1)[0])
        if param is None or not isinstance(module, ShardedParam):
            raise ModelLoadError(
                f"checkpoint tensor {ckpt_name!r} matches no parameter of {type(self.model).__name__}"
            )
        offset, rows = module.shards[shard]
        self._copy(ckpt_name, param.data.narrow(0, offset, rows), tensor)
        self.loaded.add(f"{param_name}#{shard}")

    @staticmethod
    def _copy(ckpt_name: str, dst: torch.Tensor, src: torch.Tensor) -> None:
        if tuple(dst.shape) != tuple(src.shape):
            raise ShapeMismatchError(
                f"tensor {ckpt_name!r} has shape {tuple(src.shape)}, but the model expects {tuple(dst.shape)}"
            )
        dst.copy_(src.to(dst.dtype))

    def expected(self) -> set[str]:
        keys: set[str] = set()
        for name in self.params:
            module = self.modules.get(name.rsplit(".", 1)[0])
            if isinstance(module, ShardedParam):
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
