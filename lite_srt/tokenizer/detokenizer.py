"""Streaming text from token ids: an incremental detokenizer and a stop-string matcher.

Both are per-request objects owned by the scheduler coroutine on the event-loop thread; nothing else touches
them. They keep only small windows of state, so the work per generated token does not grow with the output.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Protocol

from lite_srt.errors import InvalidRequestError

REPLACEMENT_CHAR = "\ufffd"
# The decode window grows while every token boundary in it falls inside a multi-byte character (or the model
# emits invalid bytes). Past this many tokens the window is closed anyway, accepting U+FFFD for a character that
# is still open, so a degenerate stream cannot make each step cost O(output length).
MAX_WINDOW_TOKENS = 32


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


# len(decode([token])) per token id, per (tokenizer, skip_special_tokens): a pure function of its key, memoized
# because closing a one-token window needs it for every stream every step. Bounded by the vocabulary size;
# entries go with their tokenizer.
_TOKEN_LENGTHS: weakref.WeakKeyDictionary[object, dict[bool, dict[int, int]]] = weakref.WeakKeyDictionary()


def token_length_cache(tokenizer: _Decoder, skip_special_tokens: bool) -> dict[int, int]:
    """The shared memo of single-token decode lengths for this tokenizer and setting."""
    per_tokenizer = _TOKEN_LENGTHS.get(tokenizer)
    if per_tokenizer is None:
        per_tokenizer = _TOKEN_LENGTHS[tokenizer] = {}
    return per_tokenizer.setdefault(skip_special_tokens, {})


class IncrementalDetokenizer:
    """Turns a stream of token ids into text, emitting each character once it is final.

    Text is decoded over a small window `ids[prefix_offset:]`. Its first part, `ids[prefix_offset:read_offset]`,
    was emitted by the previous window and is there for context: SentencePiece drops the first token's leading
    space, so a token decoded alone can differ from the same token decoded after another. The window closes (its
    end becomes the next window's start) when its text ends on a complete character. While it ends in U+FFFD --
    the last token stopped inside a multi-byte character -- the text before that tail is emitted and the tail is
    held until a later token completes it. Window starts are always character boundaries, so the emitted text is
    exactly `tokenizer.decode(all_ids)`.

    `spaces_between_special_tokens` is accepted for API compatibility (OpenAI/vLLM sampling parameters). Like
    transformers' fast tokenizers, our backends join special tokens to their neighbours without spaces, so the
    text always equals `tokenizer.decode(ids, skip_special_tokens)`.
    """

    def __init__(
        self,
        tokenizer: _Decoder,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        token_lengths: dict[int, int] | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        # Optional memo of len(decode([t])) (see token_length_cache); it must match this skip setting.
        self._token_lengths = token_lengths
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._emitted = 0  # characters of decode(ids[prefix_offset:]) already emitted
        # Everything emitted so far, as pieces: `text += delta` would copy the whole text on every token.
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated ids; return the text that became final (possibly "")."""
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        window = self._decode(self._ids[self._prefix_offset :])
        if not window.endswith(REPLACEMENT_CHAR) or len(self._ids) - self._prefix_offset > MAX_WINDOW_TOKENS:
            return self._close_window(window)
        # Everything before the trailing U+FFFD run is final: later bytes can only change the open character.
        return self._take(window, len(window.rstrip(REPLACEMENT_CHAR)))

    def push_one(self, token_id: int) -> str:
        """`push([token_id])`, inlined for the common case: the scheduler calls it for every stream every
        step, so the helper calls and the list are worth saving."""
        ids = self._ids
        ids.append(token_id)
        start = self._prefix_offset
        decode = self._tokenizer.decode
        window = decode(ids[start:], skip_special_tokens=self.skip_special_tokens)
        if window[-1:] == REPLACEMENT_CHAR and len(ids) - start <= MAX_WINDOW_TOKENS:
            return self._take(window, len(window.rstrip(REPLACEMENT_CHAR)))
        delta = window[self._emitted :]  # close the window: as _close_window, with the slices done once
        self._parts.append(delta)
        self._prefix_offset = start = self._read_offset
        self._read_offset = len(ids)
        lengths = self._token_lengths
        if lengths is not None and len(ids) - start == 1:  # the usual case: the window was one token
            n = lengths.get(token_id)
            if n is None:
                n = lengths[token_id] = len(decode([token_id], skip_special_tokens=self.skip_special_tokens))
            self._emitted = n
        else:
            self._emitted = len(decode(ids[start:], skip_special_tokens=self.skip_special_tokens))
        return delta

    def finish(self) -> str:
        """Emit whatever is held; an incomplete character at the very end becomes U+FFFD, as in decode()."""
        if self._read_offset == len(self._ids):
            return ""
        return self._close_window(self._decode(self._ids[self._prefix_offset :]))

    def _take(self, window: str, end: int) -> str:
        delta = window[self._emitted : end]
        self._emitted = max(self._emitted, end)
        self._parts.append(delta)
        return delta

    def _close_window(self, window: str) -> str:
        delta = self._take(window, len(window))
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._emitted = len(self._decode(self._ids[self._prefix_offset :]))
        return delta

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""


class TokenwiseDetokenizer(IncrementalDetokenizer):
    """For a tokenizer whose tokens decode independently (`decodes_tokenwise`, with `token_text(id)`): the text
    of the ids is the concatenation of their texts, so no decode window is needed. The dummy-weight server's
    NullTokenizer is one; at 512 streams the windowed decode was ~18% of the event loop's time (H200, py-spy)."""

    def push(self, token_ids: Sequence[int]) -> str:
        return "".join(self.push_one(t) for t in token_ids)

    def push_one(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tokenizer.token_text(token_id)
        self._parts.append(text)
        return text

    def finish(self) -> str:
        return ""


def make_detokenizer(
    tokenizer: _Decoder, skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True
) -> IncrementalDetokenizer:
    """The detokenizer for a stream of `tokenizer`'s ids (tokenwise where the tokenizer allows it)."""
    if getattr(tokenizer, "decodes_tokenwise", False):
        return TokenwiseDetokenizer(tokenizer, skip_special_tokens, spaces_between_special_tokens)
    return IncrementalDetokenizer(
        tokenizer,
        skip_special_tokens,
        spaces_between_special_tokens,
        token_length_cache(tokenizer, skip_special_tokens),
    )


class StopStringMatcher:
    """Finds stop strings in generated text and says how much trailing text a stream must hold back."""

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            stops = [stops]
        for s in stops:
            if not isinstance(s, str) or not s:
                raise InvalidRequestError(f"stop strings must be non-empty strings, got {s!r}", param="stop")
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        self.max_len = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, start: int = 0) -> tuple[int, str] | None:
        """The earliest stop string in `text` that ends after `start`, as (position, stop); None if none.

        Pass the text length before the latest delta as `start`: matches lying wholly before it were already
        checked, so only the last `max_len - 1` old characters plus the new ones are searched. At equal
        positions the stop listed first wins.
        """
        best: tuple[int, str] | None = None
        for s in self.stops:
            pos = text.find(s, max(0, start - len(s) + 1))
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, s)
        return best

    def holdback(self, text: str) -> int:
        """How many trailing characters of `text` are a proper prefix of some stop string (0 if none)."""
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held
