"""`Tokenizer`: text <-> ids, special tokens and chat templates for one model; `load_tokenizer` builds it.

Sources, in the order `load_tokenizer` tries them:
- a `.gguf` file (vocabulary rebuilt from its metadata, see gguf_vocab.py), or a directory holding one .gguf
  and no tokenizer files;
- a Hugging Face directory: tokenizer.json (the `tokenizers` library) or else tokenizer.model (SentencePiece),
  with tokenizer_config.json / special_tokens_map.json for special tokens and the BOS/EOS policy,
  chat_template.jinja / chat_template.json / tokenizer_config.json for the chat template, and
  generation_config.json for extra end-of-sequence ids.

Behaviour matches transformers' tokenizer for the same files. The one deliberate difference: `encode_chat`
adds BOS when the model wants one (add_bos_token) and the rendered template did not write it, where
transformers never adds it; this avoids both a missing and a doubled BOS.

A Tokenizer is immutable after loading: the server may call it from worker threads.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

from sentencepiece import SentencePieceProcessor
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from lite_srt.errors import TokenizerError
from lite_srt.tokenizer.backends import Backend, SentencePieceBackend, TokenizersBackend
from lite_srt.tokenizer.chat_template import render_chat_template
from lite_srt.tokenizer.gguf_vocab import bos_eos_post_processor, load_gguf_vocab

ChatTemplates = dict[str, str]  # name -> template; a single template is stored under "default"


class Tokenizer:
    """A model's tokenizer. Build it with `load_tokenizer`."""

    def __init__(
        self,
        backend: Backend,
        *,
        source: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        extra_eos_token_ids: Sequence[int] = (),
        chat_templates: ChatTemplates | None = None,
    ) -> None:
        self.backend = backend
        self.source = source  # the file or directory it was loaded from, for error messages
        self._tokens = {
            "bos_token": bos_token,
            "eos_token": eos_token,
            "unk_token": unk_token,
            "pad_token": pad_token,
        }
        self._ids = {name: self._id_of(tok) for name, tok in self._tokens.items()}
        self._chat_templates = dict(chat_templates or {})
        eos = {self._ids["eos_token"]} if self._ids["eos_token"] is not None else set()
        self._eos_ids = frozenset(eos | set(extra_eos_token_ids))
        named = {i for i in self._ids.values() if i is not None}
        self._special_ids = frozenset(backend.special_ids | named)
        # Whether plain encoding starts with BOS; read off the backend so every source follows one rule.
        bos_id = self._ids["bos_token"]
        self.add_bos_token = bos_id is not None and backend.encode("", True)[:1] == [bos_id]

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    # --- text <-> ids ------------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special-token text such as "<|im_start|>" becomes that token's id."""
        return self.backend.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Vocabulary spellings of `ids` (byte-level "Ġword", SentencePiece "▁word"); raises on unknown ids."""
        out = []
        for i in ids:
            tok = self.backend.id_to_token(int(i))
            if tok is None:
                raise TokenizerError(
                    f"token id {i} is outside the vocabulary of {self.source} ({self.vocab_size})"
                )
            out.append(tok)
        return out

    # --- chat --------------------------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `messages` to prompt text with the model's chat template (extra kwargs are template variables)."""
        if not messages:
            raise TokenizerError("cannot apply a chat template to an empty list of messages")
        if not all(isinstance(m, dict) for m in messages):
            raise TokenizerError("chat messages must be dicts with 'role' and 'content'")
        # Like transformers: None-valued fields (OpenAI's content=None, tool_calls=None) are dropped, since many
        # templates test for a key's presence and would print "None".
        cleaned = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return render_chat_template(
            self._pick_template(tools),
            cleaned,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            special_tokens={k: v for k, v in self._tokens.items() if v is not None},
            **kwargs,
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """Render then encode; BOS is added only if the model wants one and the template did not write it."""
        text = self.apply_chat_template(messages, add_generation_prompt, tools, **kwargs)
        ids = self.encode(text, add_special_tokens=False)
        bos, bos_id = self.bos_token, self.bos_token_id
        if self.add_bos_token and bos_id is not None and not (bos and text.startswith(bos)):
            ids.insert(0, bos_id)
        return ids

    def _pick_template(self, tools: list[dict[str, Any]] | None) -> str:
        if not self._chat_templates:
            raise TokenizerError(
                f"{self.source} has no chat template; pass one with --chat-template (a file or a Jinja string)"
            )
        if tools is not None and "tool_use" in self._chat_templates:
            return self._chat_templates["tool_use"]
        if "default" in self._chat_templates:
            return self._chat_templates["default"]
        raise TokenizerError(
            f"{self.source} has several chat templates {sorted(self._chat_templates)} and none named 'default'"
        )

    # --- properties --------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (what the embedding/logits must cover at least)."""
        return self.backend.vocab_size

    @property
    def bos_token(self) -> str | None:
        return self._tokens["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self._tokens["eos_token"]

    @property
    def bos_token_id(self) -> int | None:
        return self._ids["bos_token"]

    @property
    def eos_token_id(self) -> int | None:
        return self._ids["eos_token"]

    @property
    def pad_token_id(self) -> int | None:
        return self._ids["pad_token"]

    @property
    def eos_token_ids(self) -> set[int]:
        """Ids that end generation: EOS plus end-of-turn ids from generation_config.json or GGUF metadata."""
        return set(self._eos_ids)

    @property
    def all_special_ids(self) -> set[int]:
        """Every id `decode(..., skip_special_tokens=True)` drops, plus the named bos/eos/unk/pad ids."""
        return set(self._special_ids)

    @property
    def chat_template(self) -> str | None:
        return self._chat_templates.get("default")


# --- loading ---------------------------------------------------------------------------------------------------


def load_tokenizer(path: str, chat_template: str | None = None) -> Tokenizer:
    """Load the tokenizer of a model directory or GGUF file; `chat_template` (a file or a Jinja string) overrides
    the model's own template."""
    override = _read_template_override(chat_template) if chat_template is not None else None
    if os.path.isdir(path):
        has_hf_files = any(
            os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model")
        )
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if not has_hf_files and len(ggufs) == 1:
            return _load_gguf(ggufs[0], override)
        return _load_hf_dir(path, override)
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise TokenizerError(f"{path}: expected a model directory or a .gguf file")
        return _load_gguf(path, override)
    raise TokenizerError(f"{path}: no such tokenizer file or directory")


def _read_template_override(value: str) -> ChatTemplates:
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise TokenizerError(f"{value}: cannot read chat template ({e.strerror or e})") from e
        if value.endswith(".json"):
            return _templates_from_json(_parse_json(text, value), value)
        return {"default": text}
    if "{" not in value and value.endswith((".jinja", ".j2", ".json")):
        raise TokenizerError(f"{value}: chat template file not found")
    return {"default": value}


def _load_gguf(path: str, templates: ChatTemplates | None) -> Tokenizer:
    vocab = load_gguf_vocab(path)

    def name(i: int | None) -> str | None:
        return vocab.tokens[i] if i is not None else None

    if templates is None and vocab.chat_template:
        templates = {"default": vocab.chat_template}
    return Tokenizer(
        TokenizersBackend(vocab.backend),
        source=path,
        bos_token=name(vocab.bos_token_id),
        eos_token=name(vocab.eos_token_id),
        unk_token=name(vocab.unk_token_id),
        pad_token=name(vocab.pad_token_id),
        extra_eos_token_ids=sorted(vocab.extra_eos_token_ids),
        chat_templates=templates,
    )


def _load_hf_dir(path: str, templates: ChatTemplates | None) -> Tokenizer:
    config = _read_json_file(os.path.join(path, "tokenizer_config.json")) or {}
    special_map = _read_json_file(os.path.join(path, "special_tokens_map.json")) or {}
    names = {
        key: _token_content(config.get(key, special_map.get(key)))
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    added = _added_tokens(config)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        backend: Backend = _tokenizers_backend(os.path.join(path, "tokenizer.json"), config, names, added)
    elif os.path.isfile(os.path.join(path, "tokenizer.model")):
        backend = _sentencepiece_backend(os.path.join(path, "tokenizer.model"), config, names, added)
    else:
        raise TokenizerError(f"{path}: no tokenizer.json, tokenizer.model or .gguf file in this directory")
    return Tokenizer(
        backend,
        source=path,
        **names,
        extra_eos_token_ids=_generation_eos_ids(path),
        chat_templates=templates if templates is not None else _dir_chat_templates(path, config),
    )


def _tokenizers_backend(
    file: str, config: dict[str, Any], names: dict[str, str | None], added: dict[int, AddedToken]
) -> TokenizersBackend:
    try:
        tk = HFTokenizer.from_file(file)
    except Exception as e:  # the Rust library raises a plain Exception on any parse error
        raise TokenizerError(f"{file}: cannot load tokenizer ({e})") from e
    missing = [tok for i, tok in sorted(added.items()) if tk.token_to_id(tok.content) is None]
    if missing:
        tk.add_tokens(missing)
    # tokenizer.json's post-processor decides what add_special_tokens adds, as in transformers (whose generic
    # backend ignores tokenizer_config's add_bos_token then). Without one, the config flags decide.
    if tk.post_processor is None and ("add_bos_token" in config or "add_eos_token" in config):
        tk.post_processor = bos_eos_post_processor(
            _flagged(tk, names["bos_token"], config.get("add_bos_token")),
            _flagged(tk, names["eos_token"], config.get("add_eos_token")),
        )
    return TokenizersBackend(tk)


def _flagged(tk: HFTokenizer, token: str | None, flag: Any) -> tuple[str, int] | None:
    if not flag or token is None:
        return None
    token_id = tk.token_to_id(token)
    return (token, token_id) if token_id is not None else None


def _sentencepiece_backend(
    file: str, config: dict[str, Any], names: dict[str, str | None], added: dict[int, AddedToken]
) -> SentencePieceBackend:
    sp = SentencePieceProcessor()
    try:
        sp.load(file)
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{file}: cannot load SentencePiece model ({e})") from e
    # Control pieces ("<s>", "</s>") and tokens from tokenizer_config.json are matched whole in text.
    by_content = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i)}
    by_content.update({tok.content: i for i, tok in added.items()})
    special = {i for i, tok in added.items() if tok.special}

    def piece_id(token: str | None) -> int | None:
        if token is None:
            return None
        return by_content.get(token, sp.piece_to_id(token))

    # A SentencePiece model without a tokenizer.json is the Llama-1/2 layout: BOS by default, no EOS.
    bos = piece_id(names["bos_token"] or (sp.id_to_piece(sp.bos_id()) if sp.bos_id() >= 0 else None))
    eos = piece_id(names["eos_token"])
    return SentencePieceBackend(
        sp,
        by_content,
        special,
        prepend_id=bos if config.get("add_bos_token", True) else None,
        append_id=eos if config.get("add_eos_token", False) else None,
    )


def _added_tokens(config: dict[str, Any]) -> dict[int, AddedToken]:
    out = {}
    for key, spec in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(spec, dict) and "content" in spec:
            out[int(key)] = AddedToken(
                spec["content"],
                single_word=spec.get("single_word", False),
                lstrip=spec.get("lstrip", False),
                rstrip=spec.get("rstrip", False),
                normalized=spec.get("normalized", False),
                special=spec.get("special", False),
            )
    return out


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _dir_chat_templates(path: str, config: dict[str, Any]) -> ChatTemplates:
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return {"default": f.read()}
    as_json = _read_json_file(os.path.join(path, "chat_template.json"))
    if as_json is not None:
        return _templates_from_json(as_json, os.path.join(path, "chat_template.json"))
    return _templates_from_value(config.get("chat_template"), os.path.join(path, "tokenizer_config.json"))


def _templates_from_json(data: Any, file: str) -> ChatTemplates:
    value = data.get("chat_template") if isinstance(data, dict) else data
    templates = _templates_from_value(value, file)
    if not templates:
        raise TokenizerError(f"{file}: no 'chat_template' in this JSON file")
    return templates


def _templates_from_value(value: Any, file: str) -> ChatTemplates:
    """A chat_template entry is a string or a list of {"name", "template"} (several named templates)."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list) and all(
        isinstance(t, dict) and "name" in t and "template" in t for t in value
    ):
        return {t["name"]: t["template"] for t in value}
    raise TokenizerError(f"{file}: chat_template must be a string or a list of {{name, template}} entries")


def _generation_eos_ids(path: str) -> list[int]:
    gen = _read_json_file(os.path.join(path, "generation_config.json")) or {}
    value = gen.get("eos_token_id")
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


def _read_json_file(file: str) -> Any:
    if not os.path.isfile(file):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            return _parse_json(f.read(), file)
    except OSError as e:
        raise TokenizerError(f"{file}: cannot read ({e.strerror or e})") from e


def _parse_json(text: str, file: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from e
