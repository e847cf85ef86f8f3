"""Every registered architecture against transformers on tiny random checkpoints, in every dtype.

Each model is built by transformers with random weights, saved as safetensors, loaded by lite_srt, and its
prefill and decode logits are compared with transformers' forward on the same tokens.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from lite_srt.config import ServerArgs
from lite_srt.engine.forward_batch import ForwardBatch, ForwardMode
from lite_srt.engine.model_runner import ModelRunner
from lite_srt.errors import ShapeMismatchError, UnsupportedArchitectureError
from lite_srt.loader import load_model_config

TINY = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 500000.0,
}


def _configs():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    return {
        "llama3": LlamaConfig(**TINY, rope_parameters=LLAMA3_ROPE),
        "llama-tied": LlamaConfig(**TINY, tie_word_embeddings=True),
        "mistral": MistralConfig(**TINY, sliding_window=None),
        "qwen2": Qwen2Config(**TINY, tie_word_embeddings=False),
        "qwen3": Qwen3Config(**TINY, head_dim=128, tie_word_embeddings=False),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[str, torch.nn.Module]]:
    from transformers import AutoModelForCausalLM

    out = {}
    for name, cfg in _configs().items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        d = str(tmp_path_factory.mktemp(name))
        model.save_pretrained(d, safe_serialization=True)
        out[name] = (d, model)
    return out


def _logits(path: str, dtype: str, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """lite_srt logits of the last prompt token (prefill) and of one decode step after it."""
    args = ServerArgs(
        model_path=path, dtype=dtype, device="cpu", max_total_tokens=256, max_running_requests=4
    )
    runner = ModelRunner(args, load_model_config(path), path, 512)
    row = runner.table.alloc()
    n = len(ids)
    slots = torch.arange(n + 1)
    runner.table.write(row, 0, slots)
    with torch.inference_mode():
        fb = ForwardBatch.build(
            ForwardMode.EXTEND,
            ids[:-1],
            list(range(n - 1)),
            slots[: n - 1],
            [row],
            [n - 1],
            [n - 1],
            runner.table.table,
            runner.device,
        )
        prefill = runner.model(fb, runner.pool)
        fb = ForwardBatch.build(
            ForwardMode.DECODE,
            ids[-1:],
            [n - 1],
            slots[n - 1 : n],
            [row],
            [n],
            [1],
            runner.table.table,
            runner.device,
        )
        decode = runner.model(fb, runner.pool)
    return prefill[0], decode[0]


@pytest.mark.parametrize("arch", ["llama3", "llama-tied", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 0.1), ("float16", 0.02)])
def test_architecture_matches_transformers(checkpoints, arch, dtype, tol):
    path, ref = checkpoints[arch]
    ids = [
        int(x)
        for x in torch.randint(3, TINY["vocab_size"], (40,), generator=torch.Generator().manual_seed(1))
    ]
    ours_prefill, ours_decode = _logits(path, dtype, ids)
    with torch.no_grad():
        ref_logits = ref(torch.tensor([ids])).logits[0]
    scale = ref_logits.abs().max()
    assert (ours_prefill - ref_logits[-2]).abs().max() / scale < tol
    assert (ours_decode - ref_logits[-1]).abs().max() / scale < tol
    if dtype == "float32":
        assert ours_decode.argmax() == ref_logits[-1].argmax()


def test_architecture_specific_config_is_read(checkpoints):
    assert load_model_config(checkpoints["qwen2"][0]).attention_bias
    assert load_model_config(checkpoints["qwen3"][0]).qk_norm
    assert load_model_config(checkpoints["llama3"][0]).rope_scaling["rope_type"] == "llama3"
    assert load_model_config(checkpoints["llama-tied"][0]).tie_word_embeddings


def _copy_with_config(src: str, dst: str, **changes) -> str:
    os.makedirs(dst)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as fi, open(os.path.join(dst, f), "wb") as fo:
            fo.write(fi.read())
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst


def test_unknown_architecture_is_named(checkpoints, tmp_path):
    path = _copy_with_config(
        checkpoints["llama-tied"][0], str(tmp_path / "m"), architectures=["GPTNeoXForCausalLM"]
    )
    with pytest.raises(UnsupportedArchitectureError, match="GPTNeoXForCausalLM"):
        _logits(path, "float32", [1, 2, 3])


def test_shape_mismatch_names_the_tensor(checkpoints, tmp_path):
    path = _copy_with_config(checkpoints["qwen2"][0], str(tmp_path / "m"), intermediate_size=96)
    with pytest.raises(ShapeMismatchError, match=r"mlp\.(gate|up|down)_proj"):
        _logits(path, "float32", [1, 2, 3])


def test_dummy_weights_load_from_a_config(dummy_runner):
    runner = dummy_runner(
        {**TINY, "torch_dtype": "bfloat16"}, device="cpu", max_total_tokens=64, max_running_requests=2
    )
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    assert any(p.abs().sum() > 0 for n, p in runner.model.named_parameters() if "proj" in n)


def test_dummy_model_without_tokenizer_takes_token_ids(tmp_path):
    from lite_srt import Engine
    from lite_srt.errors import InvalidRequestError

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **TINY, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    e = Engine(model_path=str(tmp_path), load_format="dummy", max_total_tokens=256)
    try:
        out = e.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 4, "ignore_eos": True})
        assert len(out["output_ids"]) == 4
        assert out["text"] == "".join(f"<{t}>" for t in out["output_ids"])
        with pytest.raises(InvalidRequestError, match="no tokenizer"):
            e.generate(prompt="hello", sampling_params={"max_new_tokens": 1})
    finally:
        e.shutdown()
