"""The two tokenizer engines behind `Tokenizer`: a `tokenizers.Tokenizer`, or a SentencePiece model.

A backend only maps text <-> ids and knows which ids are special; chat templates, BOS policy for chat and
special-token names live in `Tokenizer`. Backends are immutable after construction, so encode/decode may run
on worker threads while the event loop uses the same object.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from sentencepiece import SentencePieceProcessor
from tokenizers import Tokenizer as HFTokenizer


class Backend(Protocol):
    def encode(self, text: str, add_special_tokens: bool) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str: ...
    def id_to_token(self, token_id: int) -> str | None: ...
    def token_to_id(self, token: str) -> int | None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def special_ids(self) -> frozenset[int]: ...


class TokenizersBackend:
    """A `tokenizers.Tokenizer` (from tokenizer.json or built from GGUF metadata)."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, tok in added.items() if tok.special)
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids


class SentencePieceBackend:
    """A SentencePiece model (tokenizer.model), plus added tokens that are matched whole before it runs.

    SentencePiece itself never parses special-token text such as "<s>" and drops control pieces when decoding;
    `added` (content -> id, from tokenizer_config.json and the model's control pieces) restores what transformers
    does: such text encodes to its id, and decode shows it unless special tokens are skipped.
    """

    def __init__(
        self,
        sp: SentencePieceProcessor,
        added: dict[str, int],
        special_ids: set[int],
        prepend_id: int | None,
        append_id: int | None,
    ) -> None:
        self.sp = sp
        self._added = dict(added)
        self._added_by_id = {i: t for t, i in self._added.items()}
        control = {i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}
        self._special_ids = frozenset(special_ids | control)
        # What `add_special_tokens=True` adds: BOS and/or EOS per the model's add_bos_token/add_eos_token.
        self._prepend_id, self._append_id = prepend_id, append_id
        # Longest first, so a token that contains another one wins.
        names = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self._vocab_size = max(sp.get_piece_size(), max(self._added_by_id, default=-1) + 1)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        ids: list[int] = []
        parts = self._split.split(text) if self._split is not None else [text]
        for i, part in enumerate(parts):
            if i % 2 == 1:  # re.split puts the captured separators at odd positions
                ids.append(self._added[part])
            elif part:
                ids.extend(self.sp.encode(part))
        if add_special_tokens:
            ids = ([self._prepend_id] if self._prepend_id is not None else []) + ids
            ids += [self._append_id] if self._append_id is not None else []
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            return self.sp.decode([i for i in ids if i not in self._special_ids])
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._special_ids:
                out.append(self._decode_run(run, first=not out))
                out.append(self.id_to_token(i) or "")
                run = []
            else:
                run.append(i)
        out.append(self._decode_run(run, first=not out))
        return "".join(out)

    def _decode_run(self, run: list[int], first: bool) -> str:
        text = self.sp.decode(run) if run else ""
        # SentencePiece drops the dummy-prefix space of the first piece it decodes; only the text's first piece
        # should lose it, not the first piece after a special token.
        if run and not first and self.sp.id_to_piece(run[0]).startswith("\u2581"):
            text = " " + text
        return text

    def id_to_token(self, token_id: int) -> str | None:
        if token_id in self._added_by_id:
            return self._added_by_id[token_id]
        if 0 <= token_id < self.sp.get_piece_size():
            return self.sp.id_to_piece(token_id)
        return None

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        i = self.sp.piece_to_id(token)
        # piece_to_id answers unk for unknown pieces; only the unk piece itself maps to it.
        return None if self.sp.is_unknown(i) and self.sp.id_to_piece(i) != token else i

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids
