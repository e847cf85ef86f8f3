"""KVPool: the per-layer K and V buffers that every request's attention reads and writes.

Owns the buffer tensors only; which slot belongs to whom is the allocator's business (allocator.py).
Ownership: the pool object is created on the event-loop thread; the GPU/forward thread writes and reads the
*contents* of the buffers for the slots of the batch it was handed. Nobody reallocates the buffers after
construction, so no lock is needed.

Slot `num_slots` is a dummy slot: padded batch entries (e.g. CUDA-graph padding) store their K/V there, so
kernels never need a branch for them. The allocator never hands it out.
"""

from __future__ import annotations

import torch


def _bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * itemsize


class KVPool:
    """K/V buffers of shape [num_slots + 1, num_kv_heads, head_dim] per layer (the +1 is the dummy slot)."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str | torch.device,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("num_slots", num_slots),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
        ):
            if value < 1:
                raise ValueError(f"KVPool: {name} must be >= 1, got {value}")
        self.num_layers = num_layers
        self.num_slots = num_slots
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        # One allocation per K and V; the per-layer buffers are views, so a kernel may also take the whole
        # [num_layers, ...] tensor with a layer stride.
        shape = (num_layers, num_slots + 1, num_kv_heads, head_dim)
        self.k_data = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v_data = torch.zeros(shape, dtype=dtype, device=self.device)
        self.k_buffers: list[torch.Tensor] = list(self.k_data.unbind(0))
        self.v_buffers: list[torch.Tensor] = list(self.v_data.unbind(0))

    @property
    def dummy_slot(self) -> int:
        """The slot padded batch entries write to; never handed out by the allocator."""
        return self.num_slots

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K plus V for one token over all layers."""
        return _bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_token * (self.num_slots + 1)

    @staticmethod
    def slots_for_bytes(
        num_bytes: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        page_size: int = 1,
    ) -> int:
        """How many usable slots (a multiple of page_size) fit in num_bytes, counting the dummy slot."""
        if page_size < 1:
            raise ValueError(f"KVPool.slots_for_bytes: page_size must be >= 1, got {page_size}")
        per_token = _bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        slots = max(num_bytes // per_token - 1, 0)
        return slots // page_size * page_size

    def __repr__(self) -> str:
        return (
            f"KVPool(layers={self.num_layers}, slots={self.num_slots}, kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, dtype={self.dtype}, device={self.device}, "
            f"{self.total_bytes / 2**20:.1f} MiB)"
        )
