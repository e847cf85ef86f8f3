"""Token-id validation (lite_srt/engine/token_ids.py) against a plain per-element check."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lite_srt.engine.token_ids import bad_token_id


def first_bad(ids: list[Any], vocab: int) -> tuple[Any] | None:
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            return (t,)
    return None


ELEMENT = st.one_of(
    st.integers(-5, 40),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
    st.text(max_size=2),
    st.lists(st.integers(), max_size=2),
)


@given(st.lists(ELEMENT, max_size=30), st.integers(1, 40))
def test_bad_token_id_matches_a_per_element_check(ids: list[Any], vocab: int) -> None:
    assert bad_token_id(ids, vocab) == first_bad(ids, vocab)


def test_valid_ids_pass_and_the_first_offender_is_reported() -> None:
    assert bad_token_id(list(range(100)), 100) is None
    assert bad_token_id([3, 100, -1], 100) == (100,)
    assert bad_token_id([None], 5) == (None,)
