"""Hugging Face safetensors checkpoints: which files make up a model dir, their validation, their tensors.

A sharded checkpoint is described by `model.safetensors.index.json` (only the shards it lists are read, so
stray files such as Mistral's consolidated.safetensors are ignored); otherwise every `*.safetensors` file in
the dir is read. Each file's header is checked against its size before any tensor is touched, so a truncated
download fails with the file's name instead of deep inside a load. Never unpickles anything.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import torch
from safetensors import SafetensorError, safe_open

from lite_srt.errors import CorruptFileError, MissingFileError, ModelLoadError
from lite_srt.loader.sources import SafetensorsSource

INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own cap


def safetensors_files(model_dir: str) -> list[str]:
    """Paths of the checkpoint's safetensors files, in load order."""
    if not os.path.isdir(model_dir):
        raise MissingFileError(f"model directory {model_dir} not found")
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.exists(index):
        return _shards_from_index(index)
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        raise MissingFileError(f"no *.safetensors files (and no {INDEX_FILE}) in {model_dir}")
    return [os.path.join(model_dir, f) for f in files]


def _shards_from_index(index: str) -> list[str]:
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))  # first-seen order, deduplicated
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(
            f"{index} is not a valid safetensors index (needs a 'weight_map' object): {e}"
        ) from e
    paths = [os.path.join(os.path.dirname(index), s) for s in shards]
    for p in paths:
        if not os.path.exists(p):
            raise MissingFileError(f"shard {os.path.basename(p)} listed in {index} is missing ({p})")
    return paths


def read_header(path: str) -> dict[str, dict]:
    """The tensor entries of a safetensors header, after checking the file holds every byte they point to."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER_BYTES or 8 + n > size:
            raise CorruptFileError(
                f"{path} is truncated or not safetensors: header claims {n} bytes, file has {size}"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(f"{path} has an invalid safetensors header: {e}") from e
    try:
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise CorruptFileError(f"{path} has an invalid safetensors header: {e!r}") from e
    if 8 + n + end > size:
        raise CorruptFileError(
            f"{path} is truncated: its tensors need {8 + n + end} bytes, the file has {size}"
        )
    return tensors


def num_safetensors_tensors(files: list[str]) -> int:
    return sum(len(read_header(p)) for p in files)


def iter_file(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one safetensors file, in header order, on the CPU in the stored dtype."""
    for name, src in iter_file_sources(path):
        yield name, src.read()


def iter_file_sources(path: str) -> Iterator[tuple[str, SafetensorsSource]]:
    """(name, lazy source) of one safetensors file; each source must be read before the next is taken."""
    names = list(read_header(path))
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in names:
                yield name, SafetensorsSource(f, name)
    except SafetensorError as e:
        raise CorruptFileError(f"{path} could not be read: {e}") from e


def iter_safetensors(model_dir: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of an HF model dir, shard by shard."""
    for path in safetensors_files(model_dir):
        yield from iter_file(path)
