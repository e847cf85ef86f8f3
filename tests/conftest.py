"""Shared fixtures: the real model (SmolLM2-135M-Instruct GGUF) and its transformers reference."""

from __future__ import annotations

import os

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm_gguf_path() -> str:
    """Path of the default model's GGUF, fetched into the cache on first use (as `lite-srt` itself does)."""
    from lite_srt.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def hf_reference(smollm_gguf_path: str):
    """(model, tokenizer) from transformers in float32: the correctness oracle."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(smollm_gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    return model, tok


@pytest.fixture
def dummy_runner(tmp_path):
    """Factory: a ModelRunner over dummy weights for a Llama config (dict of config.json fields) in tmp_path."""
    import json

    from lite_srt.config import ServerArgs
    from lite_srt.engine.model_runner import ModelRunner
    from lite_srt.loader import load_model_config

    def make(config: dict, context_length: int = 128, **server_args):
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **config}
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        args = ServerArgs(model_path=str(tmp_path), load_format="dummy", **server_args)
        return ModelRunner(args, load_model_config(str(tmp_path)), str(tmp_path), context_length)

    return make
