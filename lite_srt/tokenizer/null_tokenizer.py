"""NullTokenizer: stands in for a tokenizer when a model has none (dummy-weight benchmark configs).

Prompts must be token ids; output ids are rendered as text `<id>` so that streams, stop handling and
benchmarks that count chunks keep working. Chat templates and text prompts are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lite_srt.errors import InvalidRequestError


class NullTokenizer:
    chat_template = None
    bos_token = eos_token = None
    decodes_tokenwise = True  # decode(ids) == "".join(token_text(i) for i in ids): detokenizer.py's fast path

    def __init__(self, vocab_size: int, bos_token_id: int | None, eos_token_ids: Sequence[int]) -> None:
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_ids = set(eos_token_ids)
        self.eos_token_id = next(iter(self.eos_token_ids), None)
        self.pad_token_id = None
        self.all_special_ids: set[int] = set()

    def _refuse(self) -> InvalidRequestError:
        return InvalidRequestError(
            "this model has no tokenizer (dummy weights from a config): send token ids", param="prompt"
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise self._refuse()

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{i}>" for i in ids)

    def token_text(self, token_id: int) -> str:
        return f"<{token_id}>"

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [f"<{i}>" for i in ids]

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        raise self._refuse()

    def encode_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> list[int]:
        raise self._refuse()
