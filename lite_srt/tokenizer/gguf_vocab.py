"""Build a `tokenizers.Tokenizer` from the vocabulary a GGUF file stores in its metadata.

A GGUF has no tokenizer.json: llama.cpp keeps the tokens, merges or scores, token types and special ids under
`tokenizer.ggml.*` keys. This module owns turning those keys (read by lite_srt.loader.gguf_file, which parses a
file's header once per process; tensor data is never read) into a backend tokenizer plus the special-token facts `Tokenizer` needs. It holds no state after loading.

Two vocabulary kinds are supported, chosen by `tokenizer.ggml.model`:

- "gpt2": byte-level BPE. The merges are stored; the pre-tokenizer (how text is split before merging) is not,
  only its name in `tokenizer.ggml.pre`, so `PRE_TOKENIZER_SPLITS` maps names to llama.cpp's split rules.
- "llama": SentencePiece BPE with byte fallback. The merges are implied by the scores (a piece with a higher
  score merges first), so they are rebuilt from the vocabulary the way llama.cpp's SPM tokenizer merges.

BOS rule (the same as transformers' GGUF converter): `tokenizer.ggml.add_bos_token` decides when present;
when absent, a "llama" (SentencePiece) vocabulary adds BOS, as llama.cpp does, and a "gpt2" one does not.
The SmolLM2 GGUF stores add_bos_token = false, which is why plain text encodes with no BOS there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from lite_srt.errors import ModelLoadError, TokenizerError

logger = logging.getLogger(__name__)

# llama.cpp token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPM_SPACE = "\u2581"  # SentencePiece's visible space, "▁"

# --- metadata ----------------------------------------------------------------------------------------------


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (arrays as tuples), parsed by the loader's shared GGUF reader."""
    # Imported here: lite_srt.loader's package import pulls in torch, which the tokenizer does not need
    # until a GGUF file is actually opened.
    from lite_srt.loader.gguf_file import read_gguf_header

    try:
        return dict(read_gguf_header(path).metadata)
    except ModelLoadError as e:
        raise TokenizerError(str(e)) from e


# --- pre-tokenizer split rules (llama.cpp's `tokenizer.ggml.pre` names) -----------------------------------------

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek-V3/R1: numbers in groups of three, CJK runs, then a punctuation-aware word split.
_DEEPSEEK3 = (
    r"\p{N}{1,3}",
    r"[一-龥\u3040-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)

# Each name maps to the splits applied in order (each one re-splits the pieces of the previous one).
PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("default", "gpt2", "mpt", "olmo", "jais", "gpt-2", "phi-2", "stablelm2"), (_GPT2,)),
    # llama.cpp also isolates every digit for these (as their original tokenizer.json does), but transformers'
    # GGUF converter does not, and we match transformers: the two differ only for whitespace runs before a digit.
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), (_GPT2,)
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "dbrx", "smaug-bpe", "falcon3", "pixtral", "lfm2"), (_LLAMA3,)
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), (_QWEN2,)),
    **dict.fromkeys(("gpt-4o", "llama4"), (_GPT4O,)),
    **dict.fromkeys(("deepseek-v3",), _DEEPSEEK3),
}
DEFAULT_PRE = "default"  # used, with a warning, for names not in the table


def byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    """The split-then-bytes pre-tokenizer for a llama.cpp pre-tokenizer name."""
    name = pre or DEFAULT_PRE
    if name not in PRE_TOKENIZER_SPLITS:
        logger.warning("GGUF pre-tokenizer %r is unknown; splitting text with the GPT-2 rule", name)
        name = DEFAULT_PRE
    splits = PRE_TOKENIZER_SPLITS[name]
    if splits == (_GPT2,):
        # ByteLevel's built-in regex is exactly the GPT-2 rule; this is what transformers builds too.
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    steps = [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


# --- vocabulary builders --------------------------------------------------------------------------------------


@dataclass
class GGUFVocab:
    """A backend tokenizer built from GGUF metadata, plus the special-token facts the metadata carries."""

    backend: HFTokenizer
    model: str  # "gpt2" | "llama"
    tokens: list[str]
    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool
    add_eos_token: bool
    chat_template: str | None
    extra_eos_token_ids: set[int] = field(default_factory=set)  # end-of-turn / end-of-message ids


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (the alphabet byte-level BPE vocabularies are written in)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    spelling = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def _byte_level_model(tokens: Sequence[str], merges: Sequence[str], path: str) -> BPE:
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    # Added tokens are sometimes stored as raw text; spell those in the byte alphabet like every other token.
    vocab = {
        tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8")): i
        for i, tok in enumerate(tokens)
    }
    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep:
            raise TokenizerError(f"{path}: malformed merge {m!r} in tokenizer.ggml.merges")
        pairs.append((left, right))
    return BPE(vocab=vocab, merges=pairs, fuse_unk=False)


def _spm_merges(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """SentencePiece BPE merge order: every split of a normal piece into two normal pieces, best score first.

    SentencePiece (and llama.cpp) repeatedly merge the adjacent pair whose concatenation is the highest-scoring
    piece; ranking merges by the merged piece's score makes `tokenizers`' BPE pick the same pair.
    """
    mergeable = {tok: i for i, tok in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    found: list[tuple[float, int, int, str, str]] = []
    for piece, idx in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                found.append((-scores[idx], idx, cut, left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _spm_backend(meta: dict[str, Any], tokens: list[str], types: list[int], path: str) -> HFTokenizer:
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise TokenizerError(f"{path}: a 'llama' vocabulary needs tokenizer.ggml.scores (one per token)")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    unk_id = _token_id(meta, "unknown_token_id", len(tokens), path)
    model = BPE(
        vocab=vocab,
        merges=_spm_merges(tokens, scores, types),
        unk_token=tokens[unk_id] if unk_id is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = HFTokenizer(model)
    add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    # A normalizer (not Metaspace) so every text fragment gets the dummy prefix, even one already starting with
    # a space and one following a special token: that is what SentencePiece and llama.cpp do.
    steps = [normalizers.Prepend(SPM_SPACE)] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPM_SPACE)])
    dec = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(dec)
    return backend


def _gpt2_backend(meta: dict[str, Any], tokens: list[str], path: str) -> HFTokenizer:
    merges = meta.get("tokenizer.ggml.merges")
    if merges is None:
        raise TokenizerError(f"{path}: a 'gpt2' vocabulary needs tokenizer.ggml.merges")
    backend = HFTokenizer(_byte_level_model(tokens, merges, path))
    backend.pre_tokenizer = byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    return backend


def _add_typed_tokens(backend: HFTokenizer, tokens: list[str], types: list[int], byte_level: bool) -> None:
    """Make CONTROL (and UNKNOWN) tokens special added tokens and USER_DEFINED ones plain added tokens.

    Added tokens are matched whole in the input text before the model runs, like llama.cpp does. In a byte-level
    vocabulary a real token is spelled only with the byte alphabet; one that is not must be a mislabelled piece,
    and adding it would grow the vocabulary past the model's size, so it is skipped (as transformers does).
    """
    alphabet = set(_byte_alphabet().values()) if byte_level else None
    vocab = backend.get_vocab(with_added_tokens=False)
    special, plain = [], []
    for tok, ttype in zip(tokens, types, strict=True):
        if alphabet is not None and not set(tok) <= alphabet:
            continue
        if ttype in (CONTROL, UNKNOWN) and tok in vocab:
            special.append(AddedToken(tok, special=True, normalized=False))
        elif ttype == USER_DEFINED and tok in vocab:
            plain.append(AddedToken(tok, special=False, normalized=False))
    backend.add_special_tokens(special)
    backend.add_tokens(plain)


def bos_eos_post_processor(
    bos: tuple[str, int] | None, eos: tuple[str, int] | None
) -> processors.TemplateProcessing:
    """A post-processor adding BOS and/or EOS around a sequence (pass None to add neither)."""

    def template(seq: str, type_id: int) -> list[str]:
        head = [f"{bos[0]}:{type_id}"] if bos is not None else []
        tail = [f"{eos[0]}:{type_id}"] if eos is not None else []
        return [*head, f"${seq}:{type_id}", *tail]

    specials = list(dict.fromkeys(t for t in (bos, eos) if t is not None))
    return processors.TemplateProcessing(
        single=template("A", 0), pair=template("A", 0) + template("B", 1), special_tokens=specials
    )


def _token_id(meta: dict[str, Any], key: str, n_tokens: int, path: str) -> int | None:
    value = meta.get(f"tokenizer.ggml.{key}")
    if value is None:
        return None
    if not 0 <= int(value) < n_tokens:
        raise TokenizerError(f"{path}: tokenizer.ggml.{key} = {value} is outside the vocabulary ({n_tokens})")
    return int(value)


def load_gguf_vocab(path: str, meta: dict[str, Any] | None = None) -> GGUFVocab:
    """Build the tokenizer a GGUF file describes. `meta` may be passed when the caller already read it."""
    meta = read_gguf_metadata(path) if meta is None else meta
    model = meta.get("tokenizer.ggml.model")
    stored_tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or stored_tokens is None:
        raise TokenizerError(f"{path}: GGUF file has no tokenizer (tokenizer.ggml.model/tokens missing)")
    tokens = list(
        stored_tokens
    )  # the metadata's tuples are shared through the header cache; GGUFVocab owns a list
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerError(
            f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    if model == "gpt2":
        backend = _gpt2_backend(meta, tokens, path)
    elif model == "llama":
        backend = _spm_backend(meta, tokens, types, path)
    else:
        raise TokenizerError(
            f"{path}: tokenizer.ggml.model = {model!r} is not supported (use 'gpt2' or 'llama')"
        )
    _add_typed_tokens(backend, tokens, types, byte_level=model == "gpt2")

    ids = {
        k: _token_id(meta, f"{k}_token_id", len(tokens), path) for k in ("bos", "eos", "unknown", "padding")
    }
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama")) and ids["bos"] is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and ids["eos"] is not None
    backend.post_processor = bos_eos_post_processor(
        (tokens[ids["bos"]], ids["bos"]) if add_bos else None,
        (tokens[ids["eos"]], ids["eos"]) if add_eos else None,
    )
    extra_eos = {
        i for k in ("eot", "eom") if (i := _token_id(meta, f"{k}_token_id", len(tokens), path)) is not None
    }
    return GGUFVocab(
        backend=backend,
        model=model,
        tokens=tokens,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        unk_token_id=ids["unknown"],
        pad_token_id=ids["padding"],
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        chat_template=meta.get("tokenizer.chat_template"),
        extra_eos_token_ids=extra_eos,
    )
