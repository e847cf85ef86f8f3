"""Validation of token-id lists (HTTP bodies, Engine inputs) in C through msgspec.

A prompt of a few thousand ids checked with a Python loop per id costs ~0.2 ms; a server taking hundreds of
such requests at once (a shared-prefix benchmark sends 512) spent most of its ingest time in those loops while
the GPU waited. msgspec.convert checks the type (int, not bool) and range of every id in ~25 us.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

import msgspec

_AT = re.compile(r"\$\[(\d+)\]")


@functools.lru_cache(maxsize=8)
def _ids_type(vocab: int) -> Any:
    return list[Annotated[int, msgspec.Meta(ge=0, lt=vocab)]]


def bad_token_id(ids: list[Any], vocab: int) -> tuple[Any] | None:
    """None when every element of ids is an int (not a bool) in [0, vocab); else a 1-tuple holding the first
    offending element (a tuple, so that an offending None is told apart from no error)."""
    try:
        msgspec.convert(ids, _ids_type(vocab))
    except msgspec.ValidationError as e:
        at = _AT.search(str(e))
        return (ids[int(at.group(1))] if at else ids,)
    return None
