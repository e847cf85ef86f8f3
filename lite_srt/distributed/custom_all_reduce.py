"""CustomAllReduce: a one-shot all-reduce over CUDA IPC buffers between the GPUs of one machine.

Two reasons to have it beside NCCL (the kernel and its protocol: csrc/comm/all_reduce.h):
- It is an ordinary kernel on the caller's stream, so decode CUDA graphs can capture it. Replaying graphs that
  captured torch.distributed's NCCL collectives hung on 2 H200s, which kept tensor-parallel decode eager.
- Decode all-reduces are a few KB to a few MB, where NCCL's fixed cost dominates.

Each rank allocates one buffer (a header of flags plus two halves of `capacity` bytes), exports its IPC handle,
and maps every peer's. Tensors that fit go through the kernel; larger ones (prefill chunks) and anything
unaligned go to NCCL, decided by shape and dtype alone so every rank makes the same choice.

Ownership: created by every rank together while joining the group (a collective); afterwards used only by the
thread that runs the model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # group.py imports this module
    from lite_srt.distributed.group import TPGroup

logger = logging.getLogger(__name__)

try:
    from lite_srt import _C  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _C = None

# Bytes per call: a decode step's [batch, hidden] at batch 256 and hidden 8192 in bf16 is 4 MiB.
DEFAULT_CAPACITY = 8 << 20
MAX_RANKS = 8
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unusable_reason(device: torch.device, local_devices: list[int]) -> str | None:
    """Why this rank cannot use the custom all-reduce, or None if it can."""
    if device.type != "cuda":
        return "not on a GPU"
    if _C is None or not hasattr(_C, "all_reduce_cuda"):
        return "lite_srt._C has no CUDA all-reduce"
    if not 2 <= len(local_devices) <= MAX_RANKS:
        return f"needs 2 to {MAX_RANKS} GPUs, got {len(local_devices)}"
    me = device.index if device.index is not None else torch.cuda.current_device()
    for other in local_devices:
        if other != me and not torch.cuda.can_device_access_peer(me, other):
            return f"GPU {me} cannot access GPU {other} directly (no peer-to-peer)"
    return None


class CustomAllReduce:
    def __init__(self, tp: TPGroup, capacity: int) -> None:
        assert _C is not None
        self.rank, self.capacity = tp.rank, capacity
        self._own = _C.ar_alloc_cuda(_C.ar_header_bytes + 2 * capacity)
        handles: list[bytes | None] = [None] * tp.size
        dist.all_gather_object(handles, _C.ar_ipc_handle_cuda(self._own), group=tp.cpu_group)
        self.buffers = [
            self._own if r == tp.rank else _C.ar_ipc_open_cuda(h)
            for r, h in enumerate(handles)  # type: ignore[arg-type]
        ]

    @classmethod
    def create(
        cls, tp: TPGroup, device: torch.device, local_devices: list[int], capacity: int = DEFAULT_CAPACITY
    ) -> CustomAllReduce | None:
        """Collective over tp's CPU group: a CustomAllReduce on every rank, or None on every rank if any rank
        cannot use it (the reason is logged)."""
        reason = unusable_reason(device, local_devices)
        if not tp.min_int(0 if reason else 1):
            logger.warning(
                "custom all-reduce off (%s): NCCL sums every tensor and CUDA graphs stay off",
                reason or "another rank cannot use it",
            )
            return None
        return cls(tp, capacity)

    def fits(self, t: torch.Tensor) -> bool:
        nbytes = t.numel() * t.element_size()
        return (
            t.is_cuda
            and t.dtype in _DTYPES
            and t.is_contiguous()
            and 0 < nbytes <= self.capacity
            and nbytes % 16 == 0
            and t.data_ptr() % 16 == 0
        )

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (t must fit)."""
        _C.all_reduce_cuda(t, self.buffers, self.rank, self.capacity)
        return t

    def max_rows(self, width: int, dtype: torch.dtype) -> int:
        """The most rows of `width` elements one call takes (caps the CUDA-graph batch size)."""
        return self.capacity // (width * dtype.itemsize)
