"""Tokenizer loading, encode/decode and chat templates, checked against transformers and SentencePiece."""

from __future__ import annotations

import json
import os
import random
import shutil

import gguf
import numpy as np
import pytest
import sentencepiece as spm

from lite_srt.errors import TokenizerError
from lite_srt.tokenizer import IncrementalDetokenizer, load_tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's a test; they'll see we'VE done it!",
    "def f(x):\n\tif x  >  1:\n\t\treturn x ** 2  # square\n    else:\n        return None\n",
    "你好，世界！这是一个测试。日本語のテキストも。",
    "emoji 👋🏽 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 thumbs 👍🏿 done",
    "  leading and   mixed \t whitespace \r\n\n\n trailing   ",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "numbers 12345 and  678 9.99 3,000,000",
    "",
    " ",
    "\u00e9l\u00e8ve na\u00efve caf\u00e9 \u0645\u0631\u062d\u0628\u0627 \u043f\u0440\u0438\u0432\u0435\u0442",
]

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2? 🤔"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And in 中文?"},
]


@pytest.fixture(scope="module")
def ours(smollm_gguf_path: str):
    return load_tokenizer(smollm_gguf_path)


@pytest.fixture(scope="module")
def hf_tok(smollm_gguf_path: str):
    from transformers import AutoTokenizer

    d, f = os.path.split(smollm_gguf_path)
    return AutoTokenizer.from_pretrained(d, gguf_file=f)


def _hf_chat_ids(hf_tok, messages, add_generation_prompt: bool) -> list[int]:
    out = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# --- SmolLM2 GGUF vs transformers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_encode_and_decode_match_transformers(ours, hf_tok, text: str) -> None:
    ids = ours.encode(text)
    assert ids == hf_tok(text)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == hf_tok(text, add_special_tokens=False)["input_ids"]
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == hf_tok.decode(ids, skip_special_tokens=skip)


def test_gguf_special_token_text_encodes_to_one_id(ours) -> None:
    assert ours.encode("<|im_start|>") == [ours.bos_token_id]
    assert ours.encode("<|im_end|>") == [ours.eos_token_id]


def test_gguf_plain_text_gets_no_bos_like_transformers(ours, hf_tok) -> None:
    assert not ours.add_bos_token
    assert ours.encode("Hi")[0] != ours.bos_token_id
    assert ours.encode("Hi") == hf_tok("Hi")["input_ids"]


def test_gguf_special_token_facts_match_transformers(ours, hf_tok) -> None:
    assert ours.vocab_size == len(hf_tok)
    assert (ours.bos_token, ours.eos_token) == (hf_tok.bos_token, hf_tok.eos_token)
    assert (ours.bos_token_id, ours.eos_token_id) == (hf_tok.bos_token_id, hf_tok.eos_token_id)
    assert hf_tok.eos_token_id in ours.eos_token_ids
    assert set(hf_tok.all_special_ids) <= ours.all_special_ids
    assert ours.chat_template == hf_tok.chat_template


def test_gguf_convert_ids_to_tokens_matches_transformers(ours, hf_tok) -> None:
    ids = ours.encode(TEXTS[4] + TEXTS[2])
    assert ours.convert_ids_to_tokens(ids) == hf_tok.convert_ids_to_tokens(ids)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.convert_ids_to_tokens([ours.vocab_size + 5])


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("n_messages", [1, 2, 4])
def test_gguf_chat_template_matches_transformers(
    ours, hf_tok, add_generation_prompt: bool, n_messages: int
) -> None:
    msgs = CHAT[-n_messages:] if n_messages != 2 else CHAT[:2]
    text = ours.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt)
    assert text == hf_tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ids = ours.encode_chat(msgs, add_generation_prompt=add_generation_prompt)
    assert ids == _hf_chat_ids(hf_tok, msgs, add_generation_prompt)
    assert text.startswith(ours.bos_token)  # this template writes <|im_start|> itself ...
    assert ids[:2] != [ours.bos_token_id] * 2  # ... and no second one is added


def test_custom_template_features_render_like_transformers(ours, hf_tok) -> None:
    # tojson without HTML escaping, loop controls, namespace, trim/lstrip blocks, extra kwargs, tools.
    template = (
        "{% set ns = namespace(n=0) %}"
        "{% for m in messages %}\n"
        "  {% if m.role == 'system' %}{% continue %}{% endif %}\n"
        "  {% set ns.n = ns.n + 1 %}"
        "[{{ ns.n }}:{{ m.role }}] {{ m.content | tojson }}\n"
        "{% endfor %}"
        "{% if tools %}TOOLS {{ tools | tojson(indent=2) }}{% endif %}"
        "{% if greet %}{{ greet }}{% endif %}{{ eos_token }}"
    )
    tools = [{"type": "function", "function": {"name": "a<b>&c", "parameters": {"x": "ü"}}}]
    ours_text = load_tokenizer(ours.source, chat_template=template).apply_chat_template(
        CHAT, tools=tools, greet="hey <you>"
    )
    hf_text = hf_tok.apply_chat_template(
        CHAT,
        chat_template=template,
        tools=tools,
        tokenize=False,
        add_generation_prompt=True,
        greet="hey <you>",
    )
    assert ours_text == hf_text
    assert '"a<b>&c"' in ours_text


def test_template_raise_exception_becomes_tokenizer_error(smollm_gguf_path: str) -> None:
    tok = load_tokenizer(smollm_gguf_path, chat_template="{{ raise_exception('system role not supported') }}")
    with pytest.raises(TokenizerError, match="system role not supported"):
        tok.apply_chat_template(CHAT)


def test_template_syntax_error_becomes_tokenizer_error(smollm_gguf_path: str) -> None:
    tok = load_tokenizer(smollm_gguf_path, chat_template="{% for m in messages %}{{ m.content }")
    with pytest.raises(TokenizerError, match="syntax error"):
        tok.apply_chat_template(CHAT)


def test_chat_template_override_from_file(smollm_gguf_path: str, tmp_path) -> None:
    file = tmp_path / "t.jinja"
    file.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    tok = load_tokenizer(smollm_gguf_path, chat_template=str(file))
    assert tok.apply_chat_template(CHAT[:2]) == "<system>You are terse.<user>What is 2+2? 🤔"
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(smollm_gguf_path, chat_template=str(tmp_path / "missing.jinja"))


def test_empty_messages_and_none_fields(ours) -> None:
    with pytest.raises(TokenizerError, match="empty"):
        ours.apply_chat_template([])
    # content=None is dropped (like transformers) instead of rendering the string "None".
    text = ours.apply_chat_template([{"role": "user", "content": "x", "name": None}])
    assert "None" not in text


# --- HF directory -----------------------------------------------------------------------------------------------


def test_hf_dir_saved_by_transformers_loads_identically(ours, hf_tok, tmp_path) -> None:
    hf_tok.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    for text in TEXTS:
        assert tok.encode(text) == hf_tok(text)["input_ids"]
    ids = ours.encode(TEXTS[6])
    assert tok.decode(ids, skip_special_tokens=False) == ours.decode(ids, skip_special_tokens=False)
    assert tok.chat_template == hf_tok.chat_template
    assert tok.encode_chat(CHAT) == _hf_chat_ids(hf_tok, CHAT, True)
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (
        ours.bos_token_id,
        ours.eos_token_id,
        49152,
    )


def test_hf_dir_reads_named_templates_and_generation_eos(hf_tok, tmp_path) -> None:
    hf_tok.save_pretrained(tmp_path)
    os.remove(tmp_path / "chat_template.jinja")
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [
        {"name": "default", "template": "D{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T{{ tools | length }}"},
    ]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = load_tokenizer(str(tmp_path))
    assert tok.apply_chat_template(CHAT) == "DYou are terse."
    assert tok.apply_chat_template(CHAT, tools=[{"name": "f"}]) == "T1"
    assert tok.eos_token_ids == {0, 2}


def test_hf_dir_bos_policy_follows_post_processor_then_config(hf_tok, tmp_path) -> None:
    from transformers import AutoTokenizer

    hf_tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    # tokenizer.json has a post-processor that adds nothing: it wins over the flag, as in transformers.
    assert (
        load_tokenizer(str(tmp_path)).encode("Hello")
        == AutoTokenizer.from_pretrained(str(tmp_path))("Hello")["input_ids"]
    )
    # Without a post-processor the flag decides.
    tj = json.loads((tmp_path / "tokenizer.json").read_text())
    tj["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    tok = load_tokenizer(str(tmp_path))
    assert tok.add_bos_token
    assert tok.encode("Hello") == [tok.bos_token_id, *tok.encode("Hello", add_special_tokens=False)]
    # The SmolLM2 template writes <|im_start|> (the BOS) first, so encode_chat must not add another.
    ids = tok.encode_chat(CHAT)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


# --- SentencePiece: tokenizer.model dir and a "llama" GGUF built from it ----------------------------------------


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> tuple[str, spm.SentencePieceProcessor]:
    """A tiny Llama-style SentencePiece BPE model (byte fallback, no normalization) trained on generated text."""
    rng = random.Random(0)
    words = (
        "the quick brown fox jumps over lazy dog token serving model cache radix tree batch kernel".split()
    )
    lines = [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice(".!?,")
        for _ in range(3000)
    ]
    prefix = str(tmp_path_factory.mktemp("spm") / "m")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return prefix + ".model", spm.SentencePieceProcessor(model_file=prefix + ".model")


def _token_type(sp: spm.SentencePieceProcessor, i: int) -> int:
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


@pytest.fixture(scope="module")
def spm_gguf(spm_model, tmp_path_factory) -> str:
    _, sp = spm_model
    path = str(tmp_path_factory.mktemp("spm_gguf") / "tiny.gguf")
    n = sp.get_piece_size()
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([int(_token_type(sp, i)) for i in range(n)])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_tensor("dummy.weight", np.zeros((2, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SPM_TEXTS = [
    "the quick brown fox jumps over the lazy dog.",
    "  leading spaces  and  doubled   ones ",
    "unseen chars: 👋🏽 你好 é ß → byte fallback",
    "token\nserving\tmodel\n\n",
    "x",
    "",
]


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_sentencepiece_dir_encodes_like_sentencepiece(spm_model, tmp_path, text: str) -> None:
    model_file, sp = spm_model
    shutil.copy(model_file, tmp_path / "tokenizer.model")
    tok = load_tokenizer(str(tmp_path))
    assert tok.encode(text) == [sp.bos_id(), *sp.encode(text)]  # Llama-style default: BOS added
    assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
    assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text))


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_gguf_llama_vocab_encodes_like_sentencepiece(spm_model, spm_gguf, text: str) -> None:
    _, sp = spm_model
    tok = load_tokenizer(spm_gguf)
    assert tok.add_bos_token  # a "llama" vocabulary without the flag adds BOS, as llama.cpp does
    assert tok.encode(text) == [sp.bos_id(), *sp.encode(text)]
    assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text))


def test_gguf_llama_vocab_uses_byte_fallback_for_unseen_chars(spm_model, spm_gguf) -> None:
    _, sp = spm_model
    tok = load_tokenizer(spm_gguf)
    ids = tok.encode("👋", add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x91>", "<0x8B>"]  # the UTF-8 bytes of U+1F44B
    assert ids == sp.encode("👋")
    assert tok.decode(ids) == "👋"


def test_gguf_sentencepiece_streams_like_decode(spm_gguf) -> None:
    tok = load_tokenizer(spm_gguf)
    ids = tok.encode(" ".join(SPM_TEXTS), add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    parts = [detok.push([i]) for i in ids] + [detok.finish()]
    assert "".join(parts) == tok.decode(ids)
    assert not any("\ufffd" in p for p in parts)


def test_encode_chat_adds_bos_only_when_template_does_not(spm_gguf) -> None:
    without = load_tokenizer(spm_gguf, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    with_bos = load_tokenizer(
        spm_gguf, chat_template="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    msgs = [{"role": "user", "content": "the fox"}]
    body = without.encode("the fox", add_special_tokens=False)
    assert without.encode_chat(msgs) == [without.bos_token_id, *body]
    assert with_bos.encode_chat(msgs) == [with_bos.bos_token_id, *body]


def test_model_without_chat_template_raises_clear_error(spm_gguf) -> None:
    tok = load_tokenizer(spm_gguf)
    assert tok.chat_template is None
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.encode_chat([{"role": "user", "content": "hi"}])


# --- load errors ------------------------------------------------------------------------------------------------


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="nope"):
        load_tokenizer(str(tmp_path / "nope"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTGGUF" + bytes(64))
    with pytest.raises(TokenizerError, match="bad.gguf.*not a GGUF"):
        load_tokenizer(str(bad))
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(8) + (5).to_bytes(8, "little"))
    with pytest.raises(TokenizerError, match="trunc.gguf.*truncated"):
        load_tokenizer(str(truncated))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(TokenizerError, match="empty.*no tokenizer.json"):
        load_tokenizer(str(empty_dir))
    (empty_dir / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(str(empty_dir))


def test_gguf_without_tokenizer_metadata_is_rejected(tmp_path) -> None:
    path = str(tmp_path / "novocab.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("dummy.weight", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(TokenizerError, match="novocab.gguf.*no tokenizer"):
        load_tokenizer(path)


# --- byte-level pre-tokenizers by llama.cpp name ---------------------------------------------------------------

PRE_SAMPLE = "I'm 12345 中文abc!!\n\n  x\tY'LL be 3.14159 ok"


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "gpt-4o", "smollm", "gpt2"])
def test_pre_tokenizer_splits_like_transformers_gguf_converter(name: str) -> None:
    from tokenizers import Regex, pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as HF_SPLITS

    from lite_srt.tokenizer.gguf_vocab import byte_level_pre_tokenizer

    if name in HF_SPLITS:
        ref = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(HF_SPLITS[name]), "isolated"),
                pre_tokenizers.ByteLevel(False, use_regex=False),
            ]
        )
    else:  # transformers keeps GPT-2's own regex for names it does not list
        ref = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ours = byte_level_pre_tokenizer(name)
    assert [t for t, _ in ours.pre_tokenize_str(PRE_SAMPLE)] == [
        t for t, _ in ref.pre_tokenize_str(PRE_SAMPLE)
    ]


def test_pre_tokenizer_digit_rules_and_unknown_fallback(caplog) -> None:
    from lite_srt.tokenizer.gguf_vocab import byte_level_pre_tokenizer

    def pieces(name: str) -> list[str]:
        return [t for t, _ in byte_level_pre_tokenizer(name).pre_tokenize_str("x 12345 中文abc")]

    assert "123" in pieces("llama3") and "45" in pieces("llama3")  # numbers in groups of three
    assert {"1", "2", "3", "4", "5"} <= set(pieces("qwen2"))  # one digit per piece
    assert "ä¸Ńæĸĩ" in pieces("deepseek-v3")  # CJK run split from the Latin letters after it
    with caplog.at_level("WARNING"):
        assert pieces("no-such-pre") == pieces("gpt2")
    assert "no-such-pre" in caplog.text
