"""Model registry keyed by config.json "architectures"."""

from __future__ import annotations

from torch import nn

from lite_srt.errors import UnsupportedArchitectureError
from lite_srt.loader.model_config import ModelConfig
from lite_srt.models.llama import LlamaForCausalLM

# Every entry is the Llama block; the config switches on qkv bias (Qwen2) and q/k norm (Qwen3).
_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    cls = _REGISTRY.get(cfg.architecture)
    if cls is None:
        raise UnsupportedArchitectureError(
            f"architecture {cfg.architecture!r} is not supported; supported: {', '.join(supported_architectures())}"
        )
    return cls
