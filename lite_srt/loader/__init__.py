"""Checkpoint loading: model configs and HF-named weight tensors from safetensors, GGUF or nothing (dummy).

The model code consumes `iter_weights` and never sees file formats: every tensor arrives under its Hugging
Face name (`model.layers.0.self_attn.q_proj.weight`, ...) in HF layout. Safetensors tensors keep their stored
dtype; GGUF tensors are dequantized to float32. The model casts to its own dtype as it copies them in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from tqdm import tqdm

from lite_srt.errors import InvalidRequestError, MissingFileError
from lite_srt.loader.gguf_loader import GGUFFile, iter_gguf_sources
from lite_srt.loader.model_config import (
    ModelConfig,
    load_model_config,
    shipped_config_path,
    single_gguf_in_dir,
)
from lite_srt.loader.safetensors_loader import (
    INDEX_FILE,
    iter_file_sources,
    num_safetensors_tensors,
    safetensors_files,
)
from lite_srt.loader.sources import WeightSource

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")

__all__ = [
    "LOAD_FORMATS",
    "ModelConfig",
    "WeightSource",
    "iter_weight_sources",
    "iter_weights",
    "load_model_config",
    "resolve_load_format",
]


def resolve_load_format(model_path: str, load_format: str) -> str:
    """The concrete format ("safetensors" | "gguf" | "dummy") for `load_format`, deciding "auto" by path.

    auto: a .gguf file (or a dir holding exactly one .gguf and no safetensors) -> gguf; a dir with
    *.safetensors or a shard index -> safetensors; a shipped config name (`llama-3.1-8b`) -> dummy.
    """
    if load_format not in LOAD_FORMATS:
        raise InvalidRequestError(
            f"--load-format must be one of {LOAD_FORMATS}, got {load_format!r}", param="load_format"
        )
    if load_format != "auto":
        return load_format
    if not os.path.exists(model_path) and shipped_config_path(model_path) is not None:
        return "dummy"
    if os.path.isfile(model_path):
        if model_path.endswith(".gguf"):
            return "gguf"
        raise MissingFileError(
            f"{model_path} is a file but not a .gguf; pass an HF model directory or a .gguf file"
        )
    if not os.path.isdir(model_path):
        raise MissingFileError(f"model path {model_path!r} does not exist")
    names = os.listdir(model_path)
    if INDEX_FILE in names or any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    if single_gguf_in_dir(model_path) is not None:
        return "gguf"
    raise MissingFileError(
        f"no weights in {model_path}: expected *.safetensors or one .gguf file "
        "(use --load-format dummy for random weights)"
    )


def iter_weights(model_path: str, load_format: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, cpu tensor) for every checkpoint tensor, whole (see iter_weight_sources)."""
    for name, src in iter_weight_sources(model_path, load_format):
        yield name, src.read()


def iter_weight_sources(model_path: str, load_format: str) -> Iterator[tuple[str, WeightSource]]:
    """Yield (hf_name, source) for every checkpoint tensor, with a "Loading weights" progress bar. A source
    reads the tensor, or a slice of it (tensor parallelism), when asked; take it before advancing.

    Dummy loading yields nothing: the model keeps the random (seeded) weights it initialized itself.
    Tied checkpoints yield no lm_head.weight; the model ties it to the embedding.
    """
    fmt = resolve_load_format(model_path, load_format)
    if fmt == "dummy":
        return
    if fmt == "gguf":
        g = GGUFFile.open(_gguf_path(model_path))  # parsed once: gguf-py's metadata parse takes seconds
        total, sources = g.num_weight_tensors, iter_gguf_sources(g)
    else:
        files = safetensors_files(model_path)
        total = num_safetensors_tensors(files)
        sources = (item for path in files for item in iter_file_sources(path))
    yield from tqdm(sources, total=total, desc="Loading weights", unit="tensor")


def _gguf_path(model_path: str) -> str:
    if os.path.isdir(model_path):
        found = single_gguf_in_dir(model_path)
        if found is None:
            raise MissingFileError(f"{model_path} holds no single .gguf file to load")
        return found
    if not os.path.exists(model_path):
        raise MissingFileError(f"GGUF file {model_path} not found")
    return model_path
