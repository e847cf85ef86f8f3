"""ModelConfig: the architecture hyperparameters the model code is built from, read from any checkpoint kind.

Sources: an HF model directory (config.json + optional generation_config.json), a config.json path, a `.gguf`
file (hyperparameters from its metadata), or the short name of a config shipped in `lite_srt/configs/`
(`llama-3.1-8b`, `qwen2.5-7b`) for dummy-weight benchmarks. The result is immutable and shared read-only by
every thread.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from lite_srt.errors import MissingFileError, ModelLoadError, UnsupportedArchitectureError
from lite_srt.loader.gguf_loader import GGUFFile

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
}
# GGUF general.architecture -> (HF class, model_type). llama.cpp stores Mistral as "llama" too.
_GGUF_ARCHS = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    torch_dtype: str
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    hidden_act: str

    @classmethod
    def from_hf_dict(
        cls, d: dict, generation_config: dict | None = None, *, source: str = "config.json"
    ) -> ModelConfig:
        """Build from a parsed HF config.json; `source` names the file in error messages."""
        gen = generation_config or {}
        archs = d.get("architectures") or []
        if not archs or not isinstance(archs[0], str):
            raise ModelLoadError(f"{source}: missing 'architectures' (e.g. [\"LlamaForCausalLM\"])")
        arch = archs[0]
        model_type = str(d.get("model_type", ""))
        heads = _req_int(d, "num_attention_heads", source)
        hidden = _req_int(d, "hidden_size", source)
        theta, scaling = _rope_from_hf(d, source)
        bos = d.get("bos_token_id", gen.get("bos_token_id"))
        return cls(
            architecture=arch,
            model_type=model_type,
            vocab_size=_req_int(d, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_req_int(d, "intermediate_size", source),
            num_hidden_layers=_req_int(d, "num_hidden_layers", source),
            num_attention_heads=heads,
            num_key_value_heads=_opt_int(d, "num_key_value_heads", heads, source),
            head_dim=_opt_int(d, "head_dim", _div(hidden, heads, source), source),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=_req_int(d, "max_position_embeddings", source),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            # Qwen2 configs carry no attention_bias key: its q/k/v projections always have a bias.
            attention_bias=_is(arch, model_type, "qwen2") or bool(d.get("attention_bias", False)),
            qk_norm=_is(arch, model_type, "qwen3") or bool(d.get("qk_norm", False)),
            torch_dtype=_dtype(d.get("torch_dtype") or d.get("dtype") or "float32", source),
            bos_token_id=int(bos) if bos is not None else None,
            eos_token_ids=_eos_union(d.get("eos_token_id"), gen.get("eos_token_id")),
            hidden_act=str(d.get("hidden_act", "silu")),
        )


def load_model_config(model_path: str) -> ModelConfig:
    """Read the config of an HF dir, a config.json, a .gguf file or a shipped config name."""
    if not os.path.exists(model_path):
        shipped = shipped_config_path(model_path)
        if shipped is None:
            raise MissingFileError(
                f"model path {model_path!r} does not exist (nor is it a shipped config name: "
                f"{', '.join(shipped_config_names())})"
            )
        model_path = shipped
    if os.path.isdir(model_path):
        config_file = os.path.join(model_path, "config.json")
        if not os.path.exists(config_file):
            gguf_file = single_gguf_in_dir(model_path)
            if gguf_file is None:
                raise MissingFileError(
                    f"{config_file} not found (and {model_path} holds no single .gguf file)"
                )
            return config_from_gguf(gguf_file)
        return _config_from_json(config_file)
    if model_path.endswith(".gguf"):
        return config_from_gguf(model_path)
    return _config_from_json(model_path)


def shipped_config_names() -> list[str]:
    return sorted(f[: -len(".json")] for f in os.listdir(CONFIGS_DIR) if f.endswith(".json"))


def shipped_config_path(name: str) -> str | None:
    """Path of lite_srt/configs/<name>.json, or None when `name` is not a shipped config."""
    if name not in shipped_config_names():
        return None
    return os.path.join(CONFIGS_DIR, name + ".json")


def single_gguf_in_dir(model_dir: str) -> str | None:
    ggufs = sorted(f for f in os.listdir(model_dir) if f.endswith(".gguf"))
    return os.path.join(model_dir, ggufs[0]) if len(ggufs) == 1 else None


# HF config.json ---------------------------------------------------------------------------------------------


def _config_from_json(config_file: str) -> ModelConfig:
    d = _read_json(config_file)
    gen_file = os.path.join(os.path.dirname(config_file), "generation_config.json")
    gen = _read_json(gen_file) if os.path.exists(gen_file) else None
    return ModelConfig.from_hf_dict(d, gen, source=config_file)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError as e:
        raise MissingFileError(f"{path} not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _rope_from_hf(d: dict, source: str) -> tuple[float, dict | None]:
    """(rope_theta, normalized scaling dict) from transformers-4 `rope_scaling` or -5 `rope_parameters`."""
    params = d.get("rope_parameters")
    legacy = d.get("rope_scaling")
    raw = params if isinstance(params, dict) else legacy
    theta = d.get("rope_theta")
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    if raw is not None and not isinstance(raw, dict):
        raise ModelLoadError(f"{source}: rope scaling must be an object, got {raw!r}")
    return float(theta if theta is not None else 10000.0), _normalize_rope_scaling(raw)


def _normalize_rope_scaling(raw: dict | None) -> dict | None:
    if not raw:
        return None
    scaling = {k: v for k, v in raw.items() if k not in ("rope_theta", "type")}
    rope_type = raw.get("rope_type", raw.get("type"))
    if rope_type in (None, "default"):
        return None
    scaling["rope_type"] = rope_type
    return scaling


def _req_int(d: dict, key: str, source: str) -> int:
    if d.get(key) is None:
        raise ModelLoadError(f"{source}: missing required key {key!r}")
    return _as_int(d[key], key, source)


def _opt_int(d: dict, key: str, default: int, source: str) -> int:
    return default if d.get(key) is None else _as_int(d[key], key, source)


def _as_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def _div(a: int, b: int, source: str) -> int:
    if a % b:
        raise ModelLoadError(
            f"{source}: hidden_size {a} is not divisible by num_attention_heads {b}; set head_dim"
        )
    return a // b


def _dtype(name: Any, source: str) -> str:
    if name not in _DTYPES:
        raise ModelLoadError(
            f"{source}: unsupported torch_dtype {name!r} (expected one of {sorted(set(_DTYPES))})"
        )
    return _DTYPES[name]


def _is(arch: str, model_type: str, family: str) -> bool:
    return model_type == family or arch.lower().startswith(family)


def _eos_union(*values: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for v in values:
        for i in v if isinstance(v, list) else [v]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return tuple(ids)


# GGUF metadata ----------------------------------------------------------------------------------------------


def config_from_gguf(path: str) -> ModelConfig:
    """Hyperparameters from GGUF metadata (`{arch}.block_count` etc.); dtype is float32 after dequantization."""
    g = GGUFFile.open(path)
    arch = g.architecture
    if arch not in _GGUF_ARCHS:
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(_GGUF_ARCHS))})"
        )
    hf_arch, model_type = _GGUF_ARCHS[arch]
    heads = g.req_int(f"{arch}.attention.head_count")
    hidden = g.req_int(f"{arch}.embedding_length")
    head_dim = g.int_or(f"{arch}.attention.key_length", g.int_or(f"{arch}.rope.dimension_count", 0))
    eos = [g.int_or(k, -1) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
    bos = g.int_or("tokenizer.ggml.bos_token_id", -1)
    theta = float(g.value(f"{arch}.rope.freq_base", 10000.0))
    return ModelConfig(
        architecture=hf_arch,
        model_type=model_type,
        vocab_size=g.vocab_size,
        hidden_size=hidden,
        intermediate_size=g.req_int(f"{arch}.feed_forward_length"),
        num_hidden_layers=g.req_int(f"{arch}.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=g.int_or(f"{arch}.attention.head_count_kv", heads),
        head_dim=head_dim or _div(hidden, heads, path),
        rms_norm_eps=float(g.value(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=theta,
        rope_scaling=_gguf_rope_scaling(g, arch, head_dim or hidden // heads, theta),
        max_position_embeddings=g.req_int(f"{arch}.context_length"),
        tie_word_embeddings=not g.has_tensor("output.weight"),
        attention_bias=g.has_tensor("blk.0.attn_q.bias"),
        qk_norm=arch == "qwen3",
        torch_dtype="float32",
        bos_token_id=bos if bos >= 0 else None,
        eos_token_ids=_eos_union(*[i for i in eos if i >= 0]),
        hidden_act="silu",
    )


def _gguf_rope_scaling(g: GGUFFile, arch: str, head_dim: int, theta: float) -> dict | None:
    """HF-style rope scaling from `{arch}.rope.scaling.*`, or llama3 parameters fitted to a `rope_freqs` tensor."""
    kind = g.value(f"{arch}.rope.scaling.type", None)
    if kind not in (None, "none"):
        scaling: dict[str, Any] = {
            "rope_type": str(kind),
            "factor": float(g.value(f"{arch}.rope.scaling.factor", 1.0)),
        }
        orig = g.int_or(f"{arch}.rope.scaling.original_context_length", 0)
        if orig:
            scaling["original_max_position_embeddings"] = orig
        return scaling
    if g.has_tensor("rope_freqs.weight"):
        return llama3_scaling_from_freq_factors(
            g.tensor_f32("rope_freqs.weight").tolist(), head_dim, theta, g.path
        )
    return None


def llama3_scaling_from_freq_factors(
    factors: list[float], head_dim: int, theta: float, source: str
) -> dict | None:
    """Recover llama3 rope scaling from llama.cpp's per-frequency divisors (`rope_freqs`).

    llama.cpp bakes the llama3 rule into one divisor per frequency: 1 for short wavelengths, `factor` for long
    ones, and 1 / ((1 - s) / factor + s) between, where s is linear in 1 / wavelength. Only the line s(1/wl) is
    identifiable, so original_max_position_embeddings is fixed at Llama 3's 8192 and low/high_freq_factor
    follow; the fitted rule is re-applied and must reproduce every divisor.
    """
    factor = max(factors)
    wavelens = [2 * math.pi * theta ** (2 * i / head_dim) for i in range(len(factors))]
    if factor <= 1.0 + 1e-6:  # every divisor 1: plain rope
        return None
    mids = [
        (1 / wl, (1 / f - 1 / factor) / (1 - 1 / factor))
        for wl, f in zip(wavelens, factors, strict=True)
        if 1.0 + 1e-6 < f < factor - 1e-6
    ]
    orig = 8192
    if len(mids) >= 2:
        (x0, s0), (x1, s1) = mids[0], mids[-1]
        slope = (s1 - s0) / (x1 - x0)  # = orig / (high - low)
        low = -(s0 - slope * x0) * orig / slope
        high = low + orig / slope
    else:  # no smooth band: the divisors only say where factor starts; Llama 3's defaults fit that
        low, high = 1.0, 4.0
    scaling = {  # rounded: the divisors are float32, so the fit carries ~1e-7 noise
        "rope_type": "llama3",
        "factor": round(factor, 4),
        "low_freq_factor": round(low, 4),
        "high_freq_factor": round(high, 4),
        "original_max_position_embeddings": orig,
    }
    if not _llama3_matches(scaling, wavelens, factors):
        raise ModelLoadError(f"{source}: tensor rope_freqs.weight does not follow the llama3 scaling rule")
    return scaling


def _llama3_matches(s: dict, wavelens: list[float], factors: list[float]) -> bool:
    orig, low, high, factor = (
        s["original_max_position_embeddings"],
        s["low_freq_factor"],
        s["high_freq_factor"],
        s["factor"],
    )
    for wl, f in zip(wavelens, factors, strict=True):
        if wl < orig / high:
            want = 1.0
        elif wl > orig / low:
            want = factor
        else:
            smooth = (orig / wl - low) / (high - low)
            want = 1 / ((1 - smooth) / factor + smooth)
        if abs(want - f) > 1e-3 * max(1.0, f):
            return False
    return True
