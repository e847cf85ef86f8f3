"""Rotary position embedding: the cos/sin table (with llama3 / linear scaling) and its application."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lite_srt import kernels
from lite_srt.errors import ModelLoadError


def _inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def _llama3_scale(inv_freq: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1 frequency-dependent scaling: long wavelengths slowed by `factor`, short kept, smooth between."""
    factor = float(cfg["factor"])
    low, high = float(cfg.get("low_freq_factor", 1.0)), float(cfg.get("high_freq_factor", 4.0))
    old_ctx = float(cfg["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    mid = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(mid, smoothed, out)


def build_cos_sin_cache(
    rotary_dim: int, max_pos: int, base: float, scaling: dict[str, Any] | None
) -> torch.Tensor:
    """[max_pos, rotary_dim] float32: cos of the rotary_dim/2 frequencies, then their sin."""
    inv_freq = _inv_freq(rotary_dim, base)
    positions = torch.arange(max_pos, dtype=torch.float32)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "llama3":
        inv_freq = _llama3_scale(inv_freq, scaling)  # type: ignore[arg-type]
    elif kind == "linear":
        positions = positions / float(scaling["factor"])  # type: ignore[index]
    elif kind != "default":
        raise ModelLoadError(f"unsupported rope scaling type {kind!r} (supported: default, linear, llama3)")
    freqs = torch.outer(positions, inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(
        self, head_dim: int, max_pos: int, base: float, scaling: dict[str, Any] | None, is_neox: bool = True
    ) -> None:
        super().__init__()
        self.is_neox = is_neox
        self.register_buffer(
            "cos_sin_cache", build_cos_sin_cache(head_dim, max_pos, base, scaling), persistent=False
        )

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
        """In place on q [T, Hq, D] and k [T, Hkv, D]."""
        kernels.rotary_embedding(positions, q, k, self.cos_sin_cache, self.is_neox)
