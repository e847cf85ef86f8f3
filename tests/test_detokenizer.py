"""Incremental detokenization (UTF-8 safe, windowed) and stop-string matching, on the real SmolLM2 tokenizer."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lite_srt.errors import InvalidRequestError
from lite_srt.tokenizer import IncrementalDetokenizer, StopStringMatcher, load_tokenizer
from lite_srt.tokenizer.detokenizer import token_length_cache

STREAM_TEXTS = [
    "Hi 👋🏽! Family: 👨‍👩‍👧‍👦, flag 🏳️‍🌈, ok 👍🏿.",
    "中文测试：你好，世界！机器学习和自然语言处理。",
    "mixed 日本語 and emoji 🤖🧠 with\ttabs\nand  spaces  ",
    "plain ascii prose, nothing special here.",
]


@pytest.fixture(scope="module")
def tok(smollm_gguf_path: str):
    return load_tokenizer(smollm_gguf_path)


def _stream(detok: IncrementalDetokenizer, ids: Sequence[int], chunks: Sequence[int]) -> list[str]:
    out, pos = [], 0
    for n in chunks:
        out.append(detok.push(ids[pos : pos + n]))
        pos += n
    out.append(detok.push(ids[pos:]))
    out.append(detok.finish())
    return out


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_token_by_token_stream_never_yields_replacement_char(tok, text: str) -> None:
    ids = tok.encode(text)
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids) or text.isascii()  # the test has split chars
    detok = IncrementalDetokenizer(tok)
    parts = _stream(detok, ids, [1] * len(ids))
    assert all("\ufffd" not in p for p in parts)
    assert "".join(parts) == detok.text == tok.decode(ids) == text


@pytest.mark.parametrize("seed", range(5))
def test_random_chunked_pushes_concatenate_to_full_decode(tok, seed: int) -> None:
    rng = random.Random(seed)
    ids = tok.encode(" ".join(STREAM_TEXTS))
    chunks = []
    while sum(chunks) < len(ids):
        chunks.append(rng.randint(0, 4))
    parts = _stream(IncrementalDetokenizer(tok), ids, chunks)
    assert "".join(parts) == tok.decode(ids)
    assert all("\ufffd" not in p for p in parts)


@pytest.mark.parametrize("skip", [True, False])
def test_push_one_with_shared_length_cache_equals_push(tok, skip: bool) -> None:
    ids = tok.encode(" ".join(STREAM_TEXTS) + "<|im_end|> done")
    lengths = token_length_cache(tok, skip)
    assert token_length_cache(tok, skip) is lengths and token_length_cache(tok, not skip) is not lengths
    for _ in range(2):  # the second stream hits a warm cache
        fast = IncrementalDetokenizer(tok, skip_special_tokens=skip, token_lengths=lengths)
        slow = IncrementalDetokenizer(tok, skip_special_tokens=skip)
        for t in ids:
            assert fast.push_one(t) == slow.push([t])
        assert fast.finish() == slow.finish()
        assert fast.text == slow.text == tok.decode(ids, skip_special_tokens=skip)
    assert lengths and all(n == len(tok.decode([t], skip_special_tokens=skip)) for t, n in lengths.items())


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens_on_and_off(tok, skip: bool) -> None:
    ids = tok.encode_chat([{"role": "user", "content": "héllo 👋"}]) + tok.encode("Sure 😀<|im_end|>")
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    text = "".join(_stream(detok, ids, [1] * len(ids)))
    assert text == tok.decode(ids, skip_special_tokens=skip)
    assert ("<|im_start|>" in text) is not skip and ("<|im_end|>" in text) is not skip
    assert "Sure 😀" in text


def test_incomplete_character_is_held_then_flushed_as_replacement(tok) -> None:
    ids = tok.encode("ok 👋")
    partial = ids[:-1]  # the emoji's last byte token is missing
    detok = IncrementalDetokenizer(tok)
    streamed = "".join(detok.push([i]) for i in partial)
    assert streamed == "ok "  # everything before the unfinished emoji
    flushed = detok.finish()
    assert flushed.endswith("\ufffd")
    assert streamed + flushed == tok.decode(partial)
    assert detok.finish() == ""


@pytest.mark.parametrize("repeats", [5, 100])
def test_invalid_bytes_are_emitted_and_match_decode(tok, repeats: int) -> None:
    # A lone UTF-8 continuation byte can never complete. 100 of them exceed the window limit, which must not
    # break the result (each lone byte is U+FFFD whatever follows).
    lone = tok.encode("👋")[-1:]  # F0 9F 91 8B: the last token holds only continuation bytes
    assert tok.decode(lone) == "\ufffd"
    detok = IncrementalDetokenizer(tok)
    out = "".join(detok.push(lone) for _ in range(repeats))
    out += detok.push(tok.encode(" done")) + detok.finish()
    assert out == tok.decode(lone * repeats + tok.encode(" done"))


class _CountingDecoder:
    def __init__(self, tok) -> None:
        self.tok, self.max_window = tok, 0

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.max_window = max(self.max_window, len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_work_per_token_does_not_grow_with_output_length(tok) -> None:
    ids = tok.encode(" ".join(STREAM_TEXTS) * 40)
    counting = _CountingDecoder(tok)
    detok = IncrementalDetokenizer(counting)
    for i in ids:
        detok.push([i])
    detok.finish()
    assert len(ids) > 1000
    assert counting.max_window <= 8  # a few tokens of context plus an unfinished character
    assert detok.text == tok.decode(ids)


# --- stop strings -----------------------------------------------------------------------------------------------


def _stream_until_stop(tok, text: str, stops: list[str]) -> tuple[str, tuple[int, str] | None, list[str]]:
    """Drive detokenizer + matcher the way the scheduler does; also return what a stream would have sent."""
    matcher = StopStringMatcher(stops)
    detok = IncrementalDetokenizer(tok)
    out, sent = "", []
    for i in tok.encode(text):
        prev = len(out)
        out += detok.push([i])
        hit = matcher.find(out, prev)
        if hit is not None:
            return out[: hit[0]], hit, sent
        sent.append(out[: len(out) - matcher.holdback(out)])
    return out, None, sent


def test_stop_string_spanning_tokens_is_found_at_its_position(tok) -> None:
    text = "The answer is 42. ### END of answer ### more text after"
    assert len(tok.encode("### END")) > 1
    final, hit, sent = _stream_until_stop(tok, text, ["### END", "never"])
    assert hit == (text.index("### END"), "### END")
    assert final == text[: text.index("### END")]
    # Nothing a stream sent before the stop was found contains any part of the stop string.
    assert all(final.startswith(s) for s in sent)


def test_earliest_of_several_stops_wins(tok) -> None:
    text = "alpha beta gamma delta"
    final, hit, _ = _stream_until_stop(tok, text, ["delta", "gamma", "ma d"])
    assert hit == (text.index("gamma"), "gamma")
    assert final == "alpha beta "


def test_stop_inside_multibyte_text(tok) -> None:
    text = "你好，世界！再见"
    final, hit, _ = _stream_until_stop(tok, text, ["世界"])
    assert final == "你好，" and hit is not None and hit[1] == "世界"


def test_find_only_looks_at_matches_ending_after_start() -> None:
    m = StopStringMatcher(["abc", "x"])
    assert m.find("abc abc", 0) == (0, "abc")
    assert m.find("abc abc", 3) == (4, "abc")  # the first "abc" ended before position 3
    assert m.find("abc abc", 2) == (0, "abc")  # ...but "abc" at 0 ends at 3, after start 2
    assert m.find("zzabc", 4) == (2, "abc")
    assert m.find("abc", 3) is None
    assert m.find("", 0) is None


def test_holdback_counts_possible_stop_prefixes() -> None:
    m = StopStringMatcher(["world", "lo!"])
    assert m.holdback("Hello wor") == 3
    assert m.holdback("Hello") == 2  # "lo" may become "lo!"
    assert m.holdback("Hello!") == 0
    assert m.holdback("w") == 1
    assert m.holdback("") == 0
    assert StopStringMatcher(["aaa"]).holdback("baa") == 2


def test_empty_or_non_string_stops_are_rejected() -> None:
    with pytest.raises(InvalidRequestError) as e:
        StopStringMatcher(["ok", ""])
    assert e.value.param == "stop"
    with pytest.raises(InvalidRequestError):
        StopStringMatcher([3])  # type: ignore[list-item]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab c", max_size=40),
    stops=st.lists(st.text(alphabet="ab c", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=5), max_size=20),
)
def test_streaming_find_equals_search_of_full_text(text: str, stops: list[str], cuts: list[int]) -> None:
    m = StopStringMatcher(stops)

    def first_hit(prefix: str) -> tuple[int, str] | None:
        return min(((prefix.find(s), s) for s in stops if s in prefix), key=lambda h: h[0], default=None)

    # A stream stops at the first delta after which some stop string is present, at that text's earliest
    # match (a longer stop string that would have started earlier, had more text come, never gets the chance).
    prefixes, pos = [], 0
    for n in [*cuts, len(text)]:
        pos = min(pos + n, len(text))
        prefixes.append(text[:pos])
    expected = next((h for h in map(first_hit, prefixes) if h is not None), None)
    seen, found, pos = "", None, 0
    for n in [*cuts, len(text)]:
        prev, seen = len(seen), text[: pos + n]
        pos = len(seen)
        found = m.find(seen, prev)
        if found is not None:
            break
        # What a stream may send never contains a stop string's beginning.
        safe = seen[: len(seen) - m.holdback(seen)]
        assert expected is None or safe == text[: len(safe)] and len(safe) <= expected[0]
    if expected is None:
        assert found is None
    else:
        assert found is not None and found[0] == expected[0] and text.startswith(found[1], found[0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=40), st.integers(0, 5))
def test_tokenwise_detokenizer_matches_the_windowed_one_on_the_null_tokenizer(
    ids: list[int], chunk: int
) -> None:
    """The dummy-weight server's NullTokenizer decodes tokens independently, so make_detokenizer gives it the
    window-free detokenizer; its deltas and text must be exactly the windowed detokenizer's."""
    from lite_srt.tokenizer.detokenizer import TokenwiseDetokenizer, make_detokenizer
    from lite_srt.tokenizer.null_tokenizer import NullTokenizer

    tok = NullTokenizer(1001, None, [])
    fast, slow = make_detokenizer(tok), IncrementalDetokenizer(tok)
    assert isinstance(fast, TokenwiseDetokenizer)
    if chunk == 0:
        deltas = [(fast.push_one(t), slow.push_one(t)) for t in ids]
    else:
        pieces = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]
        deltas = [(fast.push(p), slow.push(p)) for p in pieces]
    assert all(a == b for a, b in deltas)
    assert (fast.finish(), fast.text) == (slow.finish(), slow.text) == ("", tok.decode(ids))
