"""How a tensor-parallel rank's share of a model is chosen: heads, intermediate rows, vocabulary rows.

Shares may be uneven (SmolLM2-135M has 9 query and 3 KV heads; at tp 2 one rank gets one KV head and the
other two): a rank takes whole KV heads with their query groups. With fewer KV heads than ranks, each KV head
is replicated on tp / num_kv_heads ranks, which split its query heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from lite_srt.errors import InvalidRequestError


@dataclass(frozen=True)
class Span:
    """Entries [start, start + size) of a dimension of `total`."""

    start: int
    size: int
    total: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class HeadSpans:
    q: Span  # query heads
    kv: Span  # key/value heads


def split(total: int, rank: int, size: int) -> Span:
    """Rank's contiguous share of `total`, in units that keep kernels and quantized blocks aligned."""
    unit = next(u for u in (256, 64, 8, 1) if total % u == 0 and total // u >= size)
    units = total // unit
    start, end = rank * units // size, (rank + 1) * units // size
    return Span(start * unit, (end - start) * unit, total)


def split_heads(num_heads: int, num_kv_heads: int, rank: int, size: int) -> HeadSpans:
    if num_heads % num_kv_heads:
        raise InvalidRequestError(
            f"num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"
        )
    group = num_heads // num_kv_heads
    if num_kv_heads >= size:
        kv_start, kv_end = rank * num_kv_heads // size, (rank + 1) * num_kv_heads // size
        if kv_end == kv_start:
            raise InvalidRequestError(f"--tp {size} leaves rank {rank} no attention heads", param="tp_size")
        kv = Span(kv_start, kv_end - kv_start, num_kv_heads)
        return HeadSpans(Span(kv_start * group, kv.size * group, num_heads), kv)
    if size % num_kv_heads or num_heads % size:
        raise InvalidRequestError(
            f"--tp {size} must divide the {num_heads} query heads and be a multiple of the {num_kv_heads} KV "
            "heads when there are fewer KV heads than ranks",
            param="tp_size",
        )
    q_per_rank = num_heads // size
    return HeadSpans(
        Span(rank * q_per_rank, q_per_rank, num_heads), Span(rank // (size // num_kv_heads), 1, num_kv_heads)
    )
