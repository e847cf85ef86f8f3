"""TPGroup: one rank's view of the tensor-parallel group, and the collectives the model and runner use.

The model's collectives (all-reduce after row-parallel layers, all-gather of vocab-parallel logits, the
broadcast of sampled tokens) run on `device_group`: NCCL on GPUs, gloo on the CPU. Step metadata from rank 0
goes over `cpu_group` (always gloo), so workers wait for the next step without holding a GPU stream. On GPUs of one
machine, all-reduces that fit go through `custom_ar` (CUDA IPC, capturable by CUDA graphs) instead of NCCL. With
size 1 every collective is a no-op and no process group exists. Passed explicitly to whatever needs it: no
module-global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lite_srt.distributed.custom_all_reduce import CustomAllReduce


@dataclass(frozen=True)
class TPGroup:
    rank: int
    size: int
    device_group: dist.ProcessGroup | None = None
    cpu_group: dist.ProcessGroup | None = None
    custom_ar: CustomAllReduce | None = None

    @classmethod
    def single(cls) -> TPGroup:
        return cls(0, 1)

    @property
    def is_driver(self) -> bool:
        """Rank 0 schedules and samples; the others follow."""
        return self.rank == 0

    @property
    def graph_safe(self) -> bool:
        """Whether the model's forward (less the LM head's all-gather) may be captured in a CUDA graph: every
        all-reduce it makes must then go through the custom all-reduce."""
        return self.size == 1 or self.custom_ar is not None

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.size == 1:
            return t
        if self.custom_ar is not None and self.custom_ar.fits(t):
            return self.custom_ar.all_reduce(t)
        if t.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"an all-reduce of {tuple(t.shape)} {t.dtype} does not fit the custom all-reduce and NCCL cannot "
                "run inside a CUDA graph: lower --cuda-graph-max-bs or pass --disable-cuda-graph"
            )
        dist.all_reduce(t, group=self.device_group)
        return t

    def all_gather_cols(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """[B, sizes[rank]] per rank -> [B, sum(sizes)] on every rank (parts may differ in width)."""
        if self.size == 1:
            return t
        width = max(sizes)
        if t.shape[-1] != width:  # collectives need equal shapes: pad, then trim each part
            t = torch.nn.functional.pad(t, (0, width - t.shape[-1]))
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous(), group=self.device_group)
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor to every rank (in place), over the device group."""
        if self.size > 1:
            dist.broadcast(t, src=0, group=self.device_group)
        return t

    def min_int(self, value: int) -> int:
        """The smallest of every rank's value (the KV pool must be the same size everywhere)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())
