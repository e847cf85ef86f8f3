"""The GGUF container: header parsing (metadata key/values and the tensor-info table) and raw tensor bytes.

Every GGUF consumer goes through here: model_config (hyperparameters), gguf_loader (weights) and the
tokenizer's gguf_vocab (vocabulary). gguf-py's `GGUFReader` builds a numpy view per array element, which
takes ~15 s for a 49k-token vocabulary; this reader unpacks the header with `struct` (and numeric arrays with
one `np.frombuffer` each) straight from an mmap, in well under a second.

Parsed headers are immutable (`GGUFHeader`, array values as tuples) and kept in a small process-wide cache
keyed by (path, inode, mtime, size), so the several opens of one engine start parse the file once. Any
thread may read them. Tensor data is never copied here: `GGUFData.tensor_bytes` returns a read-only uint8
view of the memory-mapped file in the byte layout `gguf.quants.dequantize` expects.

Layout (little-endian, GGUF v2/v3): magic "GGUF", u32 version, u64 tensor count, u64 kv count, the kv pairs,
the tensor infos (name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset), then padding to
`general.alignment` (default 32) and the data section the tensor offsets are relative to.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from lite_srt.errors import CorruptFileError, MissingFileError, ModelLoadError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp rejects files with more
HEADER_CACHE_SIZE = 4

# GGUF metadata value types (gguf.GGUFValueType).
_STRING, _ARRAY = 8, 9
_SCALARS = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_DTYPES = {t: np.dtype("?" if t == 7 else s.format) for t, s in _SCALARS.items()}
_U32, _U64 = _SCALARS[4], _SCALARS[10]


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One row of the tensor-info table. `shape` is in GGUF order (fastest-varying dim first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int | None  # None when gguf-py does not know the type (its block size is unknown)

    @property
    def qtype(self) -> GGMLQuantizationType | None:
        try:
            return GGMLQuantizationType(self.ggml_type)
        except ValueError:
            return None

    @property
    def type_name(self) -> str:
        q = self.qtype
        return q.name if q is not None else f"type {self.ggml_type} (unknown to gguf-py)"

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def row_major_shape(self) -> tuple[int, ...]:
        """The shape in numpy / torch (HF) order: GGUF dims reversed."""
        return self.shape[::-1]


@dataclass(frozen=True)
class GGUFHeader:
    """Everything before a GGUF file's data section. Shared read-only through the cache: do not mutate."""

    path: str
    version: int
    alignment: int
    data_offset: int  # where the data section starts; tensor offsets already include it
    file_size: int
    metadata: MappingProxyType[str, Any]  # arrays are tuples (nested arrays: tuples of tuples)
    tensors: tuple[GGUFTensorInfo, ...]  # in file order

    @functools.cached_property
    def _by_name(self) -> dict[str, GGUFTensorInfo]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> GGUFTensorInfo | None:
        return self._by_name.get(name)


class GGUFData:
    """Read-only memory map of a GGUF file's bytes, handing out zero-copy tensor views."""

    def __init__(self, header: GGUFHeader) -> None:
        self.header = header
        with _open(header.path) as f:
            # The mapping stays valid after the file is closed, for as long as any view of it is alive.
            self._bytes = np.frombuffer(_map(f, header.path), dtype=np.uint8)
        if self._bytes.size != header.file_size:
            raise CorruptFileError(f"{header.path}: GGUF file changed size while it was being opened")

    def tensor_bytes(self, info: GGUFTensorInfo) -> np.ndarray:
        """uint8 view of a tensor's data shaped (*row_major_shape[:-1], bytes per row)."""
        if info.n_bytes is None or info.qtype is None:
            raise ModelLoadError(f"{self.header.path}: tensor {info.name!r} has {info.type_name}")
        block, type_size = GGML_QUANT_SIZES[info.qtype]
        rows = info.row_major_shape
        raw = self._bytes[info.offset : info.offset + info.n_bytes]
        return raw.reshape(*rows[:-1], rows[-1] // block * type_size)


def read_gguf_header(path: str) -> GGUFHeader:
    """Parse (or fetch from the cache) the header of the GGUF file at `path`.

    Raises MissingFileError when there is no such file, CorruptFileError (naming the file) when it is not a
    GGUF file or is truncated or malformed, ModelLoadError for valid files this reader does not handle.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise MissingFileError(f"GGUF file {path} not found") from e
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read GGUF file ({e.strerror or e})") from e
    return _cached_header(path, os.path.abspath(path), st.st_ino, st.st_mtime_ns, st.st_size)


def clear_header_cache() -> None:
    _cached_header.cache_clear()


@functools.lru_cache(maxsize=HEADER_CACHE_SIZE)
def _cached_header(path: str, abspath: str, inode: int, mtime_ns: int, size: int) -> GGUFHeader:
    # `path` is part of the key only so that error messages and GGUFHeader.path keep the caller's spelling.
    with _open(path) as f:
        if size < 4 + 4 + 8 + 8:
            magic = f.read(4)
            what = "is truncated" if magic == GGUF_MAGIC else "is not a GGUF file"
            raise CorruptFileError(f"{path}: {what} (only {size} bytes)")
        with _map(f, path) as buf:
            return _parse(buf, path)


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 (every caller closes it with `with`)
    except FileNotFoundError as e:
        raise MissingFileError(f"GGUF file {path} not found") from e
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read GGUF file ({e.strerror or e})") from e


def _map(f: BinaryIO, path: str) -> mmap.mmap:
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot map GGUF file ({e})") from e


# --- parsing --------------------------------------------------------------------------------------------------


class _Cursor:
    """Sequential little-endian reads over the mapped file; every read is bounds-checked."""

    def __init__(self, buf: mmap.mmap, path: str) -> None:
        self.buf, self.path, self.pos, self.end = buf, path, 0, len(buf)

    def skip(self, n: int) -> int:
        """Advance by n bytes and return where they start."""
        start = self.pos
        if start + n > self.end:
            raise CorruptFileError(
                f"{self.path}: GGUF header is truncated at byte {start} (needs {n} more bytes, file has "
                f"{self.end})"
            )
        self.pos = start + n
        return start

    def scalar(self, s: struct.Struct) -> Any:
        return s.unpack_from(self.buf, self.skip(s.size))[0]

    def string(self) -> str:
        n = self.scalar(_U64)
        start = self.skip(n)
        # Some vocabularies store byte pieces that are not valid UTF-8 on their own; keep them decodable.
        return self.buf[start : start + n].decode("utf-8", errors="replace")

    def strings(self, count: int) -> tuple[str, ...]:
        """`count` consecutive strings: the vocabulary's hot loop, so bounds are checked inline."""
        buf, pos, end, unpack = self.buf, self.pos, self.end, _U64.unpack_from
        out = []
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.skip(8)
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > end:
                self.pos = pos
                self.skip(n)
            out.append(buf[pos : pos + n].decode("utf-8", errors="replace"))
            pos += n
        self.pos = pos
        return tuple(out)

    def value(self, vtype: int, key: str) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(key)
        s = _SCALARS.get(vtype)
        if s is None:
            raise CorruptFileError(f"{self.path}: metadata key {key!r} has unknown value type {vtype}")
        return self.scalar(s)

    def array(self, key: str) -> tuple[Any, ...]:
        item_type, count = self.scalar(_U32), self.scalar(_U64)
        if item_type == _STRING:
            return self.strings(count)
        dtype = _DTYPES.get(item_type)
        if dtype is None:  # arrays of arrays: rare and small, read element by element
            return tuple(self.value(item_type, key) for _ in range(count))
        start = self.skip(count * dtype.itemsize)
        return tuple(np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).tolist())


def _parse(buf: mmap.mmap, path: str) -> GGUFHeader:
    cur = _Cursor(buf, path)
    magic = buf[:4]
    if magic != GGUF_MAGIC:
        raise CorruptFileError(f"{path}: not a GGUF file (bad magic {magic!r})")
    cur.pos = 4
    version = cur.scalar(_U32)
    if version & 0xFFFF == 0 and version:
        raise ModelLoadError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise CorruptFileError(f"{path}: GGUF version {version} is not supported (need 2 or 3)")
    n_tensors, n_kv = cur.scalar(_U64), cur.scalar(_U64)
    metadata = _read_metadata(cur, n_kv)
    alignment = _alignment(metadata, path)
    infos = [_read_tensor_info(cur) for _ in range(n_tensors)]
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = tuple(_place(info, data_offset, len(buf), path) for info in infos)
    if len({t.name for t in tensors}) != len(tensors):
        raise CorruptFileError(f"{path}: GGUF file names a tensor twice")
    return GGUFHeader(
        path=path,
        version=version,
        alignment=alignment,
        data_offset=data_offset,
        file_size=len(buf),
        metadata=MappingProxyType(metadata),
        tensors=tensors,
    )


def _read_metadata(cur: _Cursor, n_kv: int) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        if key in meta:
            raise CorruptFileError(f"{cur.path}: metadata key {key!r} appears twice")
        meta[key] = cur.value(cur.scalar(_U32), key)
    return meta


def _alignment(metadata: dict[str, Any], path: str) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    # bool is an int subclass, but a bool alignment means the writer stored the wrong type
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise CorruptFileError(f"{path}: general.alignment = {value!r} is not a positive power of two")
    return value


def _read_tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string()
    n_dims = cur.scalar(_U32)
    if not 1 <= n_dims <= MAX_DIMS:
        raise CorruptFileError(
            f"{cur.path}: tensor {name!r} has {n_dims} dimensions (expected 1..{MAX_DIMS})"
        )
    dims = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.skip(8 * n_dims))
    return name, dims, cur.scalar(_U32), cur.scalar(_U64)


def _place(
    info: tuple[str, tuple[int, ...], int, int], data_offset: int, file_size: int, path: str
) -> GGUFTensorInfo:
    """Absolute offset and byte size of a tensor, checked against the file's end."""
    name, shape, ggml_type, rel_offset = info
    t = GGUFTensorInfo(name, shape, ggml_type, data_offset + rel_offset, None)
    if t.qtype is None:
        return t  # unknown type: loading it raises UnsupportedQuantTypeError, naming it
    block, type_size = GGML_QUANT_SIZES[t.qtype]
    if shape[0] % block:
        raise CorruptFileError(
            f"{path}: tensor {name!r} ({t.type_name}) has row length {shape[0]}, not a multiple of its "
            f"block size {block}"
        )
    n_bytes = t.n_elements // block * type_size
    if t.offset + n_bytes > file_size:
        raise CorruptFileError(
            f"{path}: tensor {name!r} data (bytes {t.offset}..{t.offset + n_bytes}) runs past the end of the "
            f"file ({file_size} bytes): truncated?"
        )
    return GGUFTensorInfo(name, shape, ggml_type, t.offset, n_bytes)
