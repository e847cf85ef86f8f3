"""Weight sources: a checkpoint tensor that is read only when asked, and only the slice asked for.

Tensor parallelism shards every matrix; a rank must read its rows or columns, not the whole tensor. Each source
knows its full shape and reads `read(dim, start, length)` from its file:
- safetensors: through the library's slice API (only those bytes are read from disk);
- GGUF: rows are whole quantization blocks, so a row range is a byte range; a column range is too when it is
  block-aligned (otherwise the rows are dequantized whole and then narrowed);
- an in-memory tensor (tests, converted weights): a narrow.

Sources are consumed on the loading thread, one at a time, while their file is open.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from lite_srt.errors import CorruptFileError, UnsupportedQuantTypeError
from lite_srt.loader.gguf_file import GGUFData, GGUFTensorInfo

Q = GGMLQuantizationType
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K})


class WeightSource(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...

    def read(self, dim: int | None = None, start: int = 0, length: int | None = None) -> torch.Tensor:
        """The whole tensor (dim None) or `length` entries of dimension `dim` from `start`."""
        ...


def _check_range(shape: tuple[int, ...], dim: int, start: int, length: int, what: str) -> None:
    if not 0 <= dim < len(shape) or start < 0 or length < 0 or start + length > shape[dim]:
        raise CorruptFileError(
            f"{what}: cannot read [{start}, {start + length}) of dim {dim} from a tensor of shape {shape}"
        )


class TensorSource:
    """A tensor already in memory."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def read(self, dim: int | None = None, start: int = 0, length: int | None = None) -> torch.Tensor:
        if dim is None:
            return self.tensor
        length = self.shape[dim] - start if length is None else length
        _check_range(self.shape, dim, start, length, "tensor")
        return self.tensor.narrow(dim, start, length)


class SafetensorsSource:
    """One tensor of an open safetensors file (a `safe_open` handle)."""

    def __init__(self, handle, name: str) -> None:  # handle: safetensors.safe_open (untyped)
        self.handle, self.name = handle, name
        self._slice = handle.get_slice(name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._slice.get_shape())

    def read(self, dim: int | None = None, start: int = 0, length: int | None = None) -> torch.Tensor:
        if dim is None:
            return self.handle.get_tensor(self.name)
        length = self.shape[dim] - start if length is None else length
        _check_range(self.shape, dim, start, length, self.name)
        index = tuple(slice(None) for _ in range(dim)) + (slice(start, start + length),)
        return self._slice[index]


class GGUFSource:
    """One GGUF tensor, dequantized to float32 in HF layout on read.

    `permuted_heads`: llama.cpp permuted this q/k projection's rows within each of that many heads; reads undo
    it, and a row read must then cover whole heads (tensor parallelism splits by heads, so it does).
    """

    def __init__(
        self, info: GGUFTensorInfo, data: GGUFData, path: str, permuted_heads: int | None = None
    ) -> None:
        self.info, self.data, self.path, self.permuted_heads = info, data, path, permuted_heads
        qtype = info.qtype
        if qtype is None or qtype not in SUPPORTED_TYPES:
            raise UnsupportedQuantTypeError(
                f"{path}: tensor {info.name!r} has type {info.type_name}; supported: "
                f"{', '.join(sorted(q.name for q in SUPPORTED_TYPES))}"
            )
        self.qtype = qtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.info.row_major_shape)

    def read(self, dim: int | None = None, start: int = 0, length: int | None = None) -> torch.Tensor:
        shape = self.shape
        if dim is None:
            dim, start, length = 0, 0, shape[0]
        length = shape[dim] - start if length is None else length
        _check_range(shape, dim, start, length, f"{self.path}: tensor {self.info.name!r}")
        if len(shape) == 1:  # norms and biases: small, read whole
            w = self._dequantize(self.data.tensor_bytes(self.info), shape)
            w = unpermute_qk(w, self.permuted_heads) if self.permuted_heads else w
            return w.narrow(0, start, length)
        if dim == len(shape) - 1:
            return self._read_columns(start, length)
        if dim != 0 or len(shape) != 2:
            return self._dequantize(self.data.tensor_bytes(self.info), shape).narrow(dim, start, length)
        return self._read_rows(start, length)

    def _read_rows(self, start: int, length: int) -> torch.Tensor:
        heads = self.permuted_heads
        rows_per_head = self.shape[0] // heads if heads else 1
        if heads and (start % rows_per_head or length % rows_per_head):
            raise CorruptFileError(
                f"{self.path}: tensor {self.info.name!r}: rows [{start}, {start + length}) split a head"
            )
        raw = self.data.tensor_bytes(self.info)[start : start + length]
        w = self._dequantize(raw, (length, self.shape[1]))
        return unpermute_qk(w, length // rows_per_head) if heads else w

    def _read_columns(self, start: int, length: int) -> torch.Tensor:
        shape = self.shape
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        raw = self.data.tensor_bytes(self.info)
        if start % block or length % block:  # not block-aligned: dequantize whole rows, then narrow
            w = self._dequantize(raw, shape)
        else:
            cols = raw[..., start // block * type_size : (start + length) // block * type_size]
            w = self._dequantize(np.ascontiguousarray(cols), (*shape[:-1], length))
            start = 0
        if self.permuted_heads:
            w = unpermute_qk(w, self.permuted_heads)
        return w.narrow(-1, start, length)

    def _dequantize(self, raw: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        try:
            arr = dequantize(raw, self.qtype).reshape(shape)
        except ValueError as e:
            raise CorruptFileError(
                f"{self.path}: tensor {self.info.name!r} ({self.qtype.name}, shape {self.shape}) is malformed: {e}"
            ) from e
        # F32 data is a read-only view into the memory-mapped file; the caller gets its own writable copy.
        return torch.from_numpy(
            arr if arr.flags.writeable and arr.dtype == np.float32 else arr.astype(np.float32)
        )


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row permutation of q/k (its rope pairs adjacent dims, HF's rope the two halves).

    llama.cpp orders each head's rows as (pair, half); HF keeps the two halves contiguous.
    """
    rows = w.shape[0]
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
        .contiguous()
    )
