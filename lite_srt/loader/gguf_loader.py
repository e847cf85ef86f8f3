"""GGUF checkpoints: metadata access and float32 tensors under their Hugging Face names.

Owns the mapping from llama.cpp tensor names to HF names and which q/k rows llama.cpp permuted; reading,
dequantizing (through gguf-py, the same code transformers uses, so results match it bit for bit) and
un-permuting are the GGUFSource's (sources.py). The file
format itself (header parsing, tensor byte views) is gguf_file's. Runs on whichever thread loads weights;
holds no state beyond the memory-mapped file it reads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lite_srt.errors import ModelLoadError
from lite_srt.loader.gguf_file import GGUFData, GGUFHeader, GGUFTensorInfo, read_gguf_header
from lite_srt.loader.sources import SUPPORTED_TYPES, GGUFSource

__all__ = ["SUPPORTED_TYPES", "GGUFFile", "iter_gguf", "iter_gguf_sources"]

# Tensors that carry no weights of their own. rope_freqs holds llama3 rope scaling divisors; ModelConfig turns
# them back into rope_scaling (see model_config.llama3_scaling_from_freq_factors), so the model never needs them.
SKIPPED_TENSORS = frozenset({"rope_freqs.weight"})
# Architectures whose llama.cpp converter permutes q_proj/k_proj rows (for its interleaved rope kernel).
PERMUTED_QK_ARCHS = frozenset({"llama", "mistral"})

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass
class GGUFFile:
    """An opened GGUF file: typed metadata lookups and tensor access by GGUF name.

    The header comes from gguf_file's cache (parsed once per process); the file is memory-mapped only when
    tensor data is first read, so reading the config never maps the weights.
    """

    path: str
    header: GGUFHeader

    @classmethod
    def open(cls, path: str) -> GGUFFile:
        return cls(path, read_gguf_header(path))

    @functools.cached_property
    def data(self) -> GGUFData:
        return GGUFData(self.header)

    @property
    def architecture(self) -> str:
        return str(self.value("general.architecture", None) or self._missing("general.architecture"))

    def value(self, key: str, default: Any) -> Any:
        return self.header.metadata.get(key, default)

    def req_int(self, key: str) -> int:
        v = self.value(key, None)
        return self._missing(key) if v is None else int(v)

    def int_or(self, key: str, default: int) -> int:
        v = self.value(key, None)
        return default if v is None else int(v)

    @property
    def vocab_size(self) -> int:
        tokens = self.value("tokenizer.ggml.tokens", None)
        if tokens is not None:
            return len(tokens)
        return self.req_int(f"{self.architecture}.vocab_size")

    def has_tensor(self, name: str) -> bool:
        return self.header.tensor(name) is not None

    def tensor_f32(self, name: str) -> torch.Tensor:
        info = self.header.tensor(name)
        if info is None:
            raise ModelLoadError(f"{self.path}: tensor {name!r} not found")
        return dequantize_tensor(info, self.data, self.path)

    @property
    def num_weight_tensors(self) -> int:
        return sum(1 for t in self.header.tensors if t.name not in SKIPPED_TENSORS)

    def _missing(self, key: str) -> Any:
        raise ModelLoadError(f"{self.path}: GGUF metadata key {key!r} is missing")


def hf_tensor_name(gguf_name: str, source: str = "GGUF file") -> str | None:
    """The HF name of a GGUF tensor; None for SKIPPED_TENSORS; ModelLoadError for names we cannot place."""
    if gguf_name in SKIPPED_TENSORS:
        return None
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _GLOBAL_NAMES and kind in ("weight", "bias"):
        return f"{_GLOBAL_NAMES[stem]}.{kind}"
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    raise ModelLoadError(f"{source}: unknown GGUF tensor {gguf_name!r}: lite_srt has no place to load it")


def dequantize_tensor(info: GGUFTensorInfo, data: GGUFData, source: str) -> torch.Tensor:
    """float32 tensor in HF (row-major, reversed GGUF dims) layout."""
    return GGUFSource(info, data, source).read()


def iter_gguf(source: str | GGUFFile) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, float32 tensor) for every weight of a GGUF file (path or opened), in file order."""
    for name, src in iter_gguf_sources(source):
        yield name, src.read()


def iter_gguf_sources(source: str | GGUFFile) -> Iterator[tuple[str, GGUFSource]]:
    """(hf_name, lazy source) for every weight of a GGUF file, in file order; nothing is read yet."""
    g = source if isinstance(source, GGUFFile) else GGUFFile.open(source)
    path = g.path
    arch = g.architecture
    n_heads = g.req_int(f"{arch}.attention.head_count")
    # heads per projection whose rows (weight and bias) llama.cpp permuted
    permuted = {"q_proj": n_heads, "k_proj": g.int_or(f"{arch}.attention.head_count_kv", n_heads)}
    for t in g.header.tensors:
        hf_name = hf_tensor_name(t.name, path)
        if hf_name is None:
            continue
        proj = hf_name.split(".")[-2]
        heads = (
            permuted[proj]
            if arch in PERMUTED_QK_ARCHS and ".self_attn." in hf_name and proj in permuted
            else None
        )
        yield hf_name, GGUFSource(t, g.data, path, heads)
