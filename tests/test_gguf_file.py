"""gguf_file: the fast GGUF header reader agrees with gguf-py's GGUFReader, caches, and rejects bad files."""

from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.quants import quantize

from lite_srt.errors import CorruptFileError, MissingFileError, TokenizerError, UnsupportedQuantTypeError
from lite_srt.loader import gguf_file, iter_weights, load_model_config
from lite_srt.loader.gguf_file import GGUFData, GGUFHeader, clear_header_cache, read_gguf_header
from lite_srt.loader.gguf_loader import GGUFFile
from lite_srt.tokenizer.gguf_vocab import load_gguf_vocab, read_gguf_metadata


def _as_lists(v: object) -> object:
    return [_as_lists(x) for x in v] if isinstance(v, tuple) else v


def _assert_matches_gguf_py(header: GGUFHeader, path: str) -> None:
    """Metadata, tensor-info table and tensor bytes equal what gguf-py's reader finds in the same file."""
    ref = GGUFReader(path)
    ref_meta = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(header.metadata) == list(ref_meta)
    for key, value in ref_meta.items():
        assert _as_lists(header.metadata[key]) == value, key
    assert (header.alignment, header.data_offset) == (ref.alignment, ref.data_offset)
    assert len(header.tensors) == len(ref.tensors)
    data = GGUFData(header)
    for ours, theirs in zip(header.tensors, ref.tensors, strict=True):
        assert ours.name == theirs.name
        assert ours.shape == tuple(theirs.shape.tolist())
        assert ours.qtype == theirs.tensor_type
        assert (ours.offset, ours.n_bytes) == (theirs.data_offset, theirs.n_bytes), ours.name
        got = data.tensor_bytes(ours)
        assert got.tobytes() == theirs.data.tobytes(), ours.name
        assert got.shape[:-1] == theirs.data.shape[:-1], ours.name


def _write(
    path, meta: dict[str, object], tensors: dict[str, tuple[np.ndarray, Q | None]], align: int = 0
) -> str:
    w = GGUFWriter(str(path), "llama")  # writes general.architecture itself
    if align:
        w.add_custom_alignment(align)
    for key, value in meta.items():
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_int64(key, value)
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


RNG = np.random.default_rng(0)
SMALL_META: dict[str, object] = {
    "tokenizer.ggml.tokens": ["<s>", "", "héllo", "▁wörld", "\u4e2d\u6587", "a b"],
    "tokenizer.ggml.scores": [0.0, -1.5, -2.25, 3.0, 1e-3, -7.0],
    "tokenizer.ggml.token_type": [3, 1, 1, 1, 4, 6],
    "some.flags": [True, False, True],
    "some.bool": True,
    "some.float": 0.1,
    "some.int": -(2**40),
    "some.text": "multi\nline ✓",
    "some.empty": [],
}
SMALL_TENSORS = {
    "token_embd.weight": (RNG.standard_normal((6, 64)).astype(np.float32), None),
    "blk.0.attn_q.weight": (quantize(RNG.standard_normal((4, 64)).astype(np.float32), Q.Q8_0), Q.Q8_0),
    "blk.0.ffn_up.weight": (quantize(RNG.standard_normal((3, 64)).astype(np.float32), Q.Q4_1), Q.Q4_1),
    "blk.0.attn_norm.weight": (RNG.standard_normal(7).astype(np.float16), None),
}


# --- equality with gguf-py --------------------------------------------------------------------------------


def test_real_gguf_header_equals_gguf_py_reader(smollm_gguf_path: str) -> None:
    clear_header_cache()
    _assert_matches_gguf_py(read_gguf_header(smollm_gguf_path), smollm_gguf_path)


@pytest.mark.parametrize("align", [0, 8, 64, 256])
def test_written_gguf_header_equals_gguf_py_reader_for_any_alignment(tmp_path, align: int) -> None:
    path = _write(tmp_path / f"a{align}.gguf", SMALL_META, SMALL_TENSORS, align)
    header = read_gguf_header(path)
    assert header.alignment == (align or 32)
    assert header.data_offset % header.alignment == 0
    assert all(t.offset % header.alignment == 0 for t in header.tensors)
    _assert_matches_gguf_py(header, path)


def test_nested_arrays_keep_their_structure_and_the_parse_continues(tmp_path) -> None:
    meta = {"nest": [[1, 2], [3]], "nest.str": [["x", "yz"]], "after": "still here"}
    path = _write(tmp_path / "nested.gguf", meta, {"token_embd.weight": SMALL_TENSORS["token_embd.weight"]})
    header = read_gguf_header(path)
    assert header.metadata["nest"] == ((1, 2), (3,))
    assert header.metadata["nest.str"] == (("x", "yz"),)
    assert header.metadata["after"] == "still here"
    # gguf-py flattens nested arrays in contents(); the values (and everything after them) still agree
    ref = GGUFReader(path)
    assert ref.fields["nest"].contents() == [1, 2, 3]
    assert header.tensors[0].offset == ref.tensors[0].data_offset


def test_tensor_f32_dequantizes_from_zero_copy_views(tmp_path) -> None:
    path = _write(tmp_path / "t.gguf", SMALL_META, SMALL_TENSORS, 64)
    g = GGUFFile.open(path)
    embd = g.tensor_f32("token_embd.weight")
    assert np.array_equal(embd.numpy(), SMALL_TENSORS["token_embd.weight"][0])
    embd[0, 0] = 123.0  # the caller's copy is writable and the file is untouched
    assert g.tensor_f32("token_embd.weight")[0, 0] != 123.0
    view = g.data.tensor_bytes(g.header.tensor("blk.0.attn_q.weight"))
    assert not view.flags.writeable and not view.flags.owndata
    assert (
        g.tensor_f32("blk.0.attn_norm.weight").tolist() == SMALL_TENSORS["blk.0.attn_norm.weight"][0].tolist()
    )


# --- speed and caching ------------------------------------------------------------------------------------


def test_real_gguf_header_parses_in_well_under_gguf_py_time(smollm_gguf_path: str) -> None:
    clear_header_cache()
    start = time.perf_counter()
    header = read_gguf_header(smollm_gguf_path)
    elapsed = time.perf_counter() - start
    # gguf-py's reader takes 5-15 s on this file (2 cores); ours ~0.1 s. Loose bound for a loaded machine.
    assert elapsed < 3.0, elapsed
    assert len(header.metadata["tokenizer.ggml.tokens"]) == 49152


def test_config_weights_and_vocab_parse_the_header_once(tmp_path, monkeypatch) -> None:
    meta = {**SMALL_META, "tokenizer.ggml.model": "llama", "tokenizer.ggml.unknown_token_id": 1}
    meta.update({f"llama.{k}": 2 for k in ("block_count", "embedding_length", "feed_forward_length")})
    meta.update({"llama.attention.head_count": 1, "llama.context_length": 64})
    path = _write(
        tmp_path / "once.gguf", meta, {"blk.0.attn_norm.weight": SMALL_TENSORS["blk.0.attn_norm.weight"]}
    )
    calls = []
    real_parse = gguf_file._parse
    monkeypatch.setattr(gguf_file, "_parse", lambda buf, p: calls.append(p) or real_parse(buf, p))
    clear_header_cache()
    assert load_model_config(path).vocab_size == 6
    assert [name for name, _ in iter_weights(path, "gguf")] == ["model.layers.0.input_layernorm.weight"]
    assert load_gguf_vocab(path).tokens[2] == "héllo"
    assert calls == [path]


def test_changed_file_is_parsed_again(tmp_path) -> None:
    path = _write(tmp_path / "c.gguf", {"v": 1}, {})
    first = read_gguf_header(path)
    assert read_gguf_header(path) is first
    mtime_ns = os.stat(path).st_mtime_ns
    _write(tmp_path / "c.gguf", {"v": 2}, {})  # same size: only the mtime tells the two apart
    # bump the mtime, so that a rewrite within one filesystem clock tick still counts as a change
    os.utime(path, ns=(mtime_ns, mtime_ns + 1_000_000))
    assert read_gguf_header(path).metadata["v"] == 2


def test_cached_metadata_cannot_be_mutated(tmp_path) -> None:
    path = _write(tmp_path / "ro.gguf", SMALL_META, {})
    header = read_gguf_header(path)
    with pytest.raises(TypeError):
        header.metadata["some.int"] = 1  # type: ignore[index]
    assert isinstance(header.metadata["tokenizer.ggml.tokens"], tuple)
    meta = read_gguf_metadata(path)
    meta.clear()  # a caller's dict is its own copy
    assert read_gguf_header(path).metadata["some.int"] == -(2**40)


# --- bad files ---------------------------------------------------------------------------------------------


def _locate_type_field(raw: bytes, name: str) -> int:
    """Byte offset of a 1-d tensor's ggml type in its info record (after name, u32 n_dims, u64 dim)."""
    encoded = struct.pack("<Q", len(name)) + name.encode()
    return raw.index(encoded) + len(encoded) + 4 + 8


def test_unknown_ggml_type_parses_but_loading_it_is_unsupported(tmp_path) -> None:
    path = _write(tmp_path / "u.gguf", {}, {"blk.0.attn_norm.weight": (np.ones(32, np.float32), None)})
    raw = bytearray(open(path, "rb").read())
    struct.pack_into("<I", raw, _locate_type_field(bytes(raw), "blk.0.attn_norm.weight"), 99)
    (tmp_path / "u.gguf").write_bytes(bytes(raw))
    info = read_gguf_header(path).tensor("blk.0.attn_norm.weight")
    assert info is not None and info.qtype is None and info.n_bytes is None
    with pytest.raises(UnsupportedQuantTypeError, match=r"blk\.0\.attn_norm\.weight.*type 99"):
        GGUFFile.open(path).tensor_f32("blk.0.attn_norm.weight")


@pytest.mark.parametrize("keep", [30, 200, 600, -40])  # counts, kv pairs, tensor infos, data
def test_truncated_file_raises_corrupt_file_error_naming_it(tmp_path, keep: int) -> None:
    full = open(_write(tmp_path / "full.gguf", SMALL_META, SMALL_TENSORS), "rb").read()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[:keep])
    with pytest.raises(CorruptFileError, match="cut.gguf.*(truncated|past the end)"):
        GGUFFile.open(str(cut))
    with pytest.raises(TokenizerError, match="cut.gguf"):
        read_gguf_metadata(str(cut))


def test_bad_alignment_magic_version_and_missing_file_are_rejected(tmp_path) -> None:
    w = GGUFWriter(str(tmp_path / "al.gguf"), "llama")
    w.add_uint32("general.alignment", 48)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(CorruptFileError, match="al.gguf.*alignment"):
        read_gguf_header(str(tmp_path / "al.gguf"))
    (tmp_path / "magic.gguf").write_bytes(b"GGML" + bytes(40))
    with pytest.raises(CorruptFileError, match="magic.gguf.*not a GGUF"):
        read_gguf_header(str(tmp_path / "magic.gguf"))
    (tmp_path / "v9.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(CorruptFileError, match="v9.gguf.*version 9"):
        read_gguf_header(str(tmp_path / "v9.gguf"))
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty.gguf"):
        read_gguf_header(str(tmp_path / "empty.gguf"))
    with pytest.raises(MissingFileError, match="gone.gguf"):
        read_gguf_header(str(tmp_path / "gone.gguf"))


def test_duplicate_metadata_key_is_corrupt(tmp_path) -> None:
    path = _write(tmp_path / "dup.gguf", {"key.a": 1, "key.b": 2}, {})
    raw = open(path, "rb").read().replace(b"key.b", b"key.a")
    (tmp_path / "dup.gguf").write_bytes(raw)
    with pytest.raises(CorruptFileError, match="dup.gguf.*'key.a' appears twice"):
        read_gguf_header(path)
