"""ServerArgs: the one frozen dataclass holding every engine and server setting.

The CLI flags of `lite-srt serve|generate` are generated from its fields (name, type, default, help), so a
default lives in exactly one place. Derived values are properties.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from lite_srt.errors import InvalidRequestError

DType = Literal["auto", "float32", "bfloat16", "float16"]


def _opt(
    help: str,
    default: Any = None,
    choices: tuple[Any, ...] | None = None,
    aliases: tuple[str, ...] = (),
    **kw: Any,
) -> Any:
    meta: dict[str, Any] = {"help": help, "aliases": aliases}
    if choices is not None:
        meta["choices"] = choices
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class ServerArgs:
    # Model
    model_path: str | None = _opt(
        "HF model directory or .gguf file; default: the embedded SmolLM2-135M-Instruct"
    )
    tokenizer_path: str | None = _opt("tokenizer directory or .gguf file (default: the model path)")
    load_format: str = _opt("how to load weights", "auto", ("auto", "safetensors", "gguf", "dummy"))
    dtype: str = _opt(
        "weights/activation dtype; auto = config dtype on GPU, float32 on CPU",
        "auto",
        ("auto", "float32", "bfloat16", "float16"),
    )
    device: str | None = _opt("cuda when available, else cpu", None)
    context_length: int | None = _opt("max tokens of prompt + output (default: the model's)")
    served_model_name: str | None = _opt("model name reported by the API (default: from the model path)")
    chat_template: str | None = _opt("a jinja2 chat template file or string overriding the model's")
    seed: int = _opt("random seed for weights of --load-format dummy and for unseeded requests", 0)
    # Memory and batching
    max_total_tokens: int | None = _opt("KV pool capacity in tokens (default: sized from memory)")
    mem_fraction_static: float | None = _opt("fraction of GPU memory for weights + KV pool (GPU only)")
    max_running_requests: int | None = _opt(
        "most requests decoding at once (default: from the KV pool, one per 1,024 tokens, 256 to 1,024)"
    )
    max_queued_requests: int | None = _opt("answer 503 when this many requests wait (default: unbounded)")
    chunked_prefill_size: int | None = _opt(
        "per-step prefill token budget; long prompts are split in chunks (default: 8192 on GPUs with 60+ GiB, "
        "else 2048)"
    )
    page_size: int = _opt("KV allocation granularity in tokens", 1)
    schedule_policy: str = _opt(
        "waiting-queue order: fcfs, lpm (longest cached prefix first), lof (longest remaining output first: a "
        "backlog's long generations start early, so the run does not end on one started last)",
        "fcfs",
        ("fcfs", "lpm", "lof"),
    )
    disable_radix_cache: bool = _opt("use the naive cache (no prefix reuse), for A/B", False)
    schedule_conservativeness: float = _opt(
        "scales the KV kept back for running requests' future tokens when admitting new ones "
        "(0 = admit greedily and rely on retraction)",
        1.0,
    )
    # GPU
    disable_cuda_graph: bool = _opt("run decode eagerly instead of replaying CUDA graphs (A/B)", False)
    cuda_graph_max_bs: int | None = _opt(
        "largest decode batch captured in a CUDA graph (default: by GPU memory)"
    )
    disable_overlap_schedule: bool = _opt(
        "process each step's results before building the next step (A/B for overlap scheduling)", False
    )
    disable_mixed_chunk: bool = _opt(
        "run prefill chunks alone instead of mixing running requests' decodes into them (A/B)", False
    )
    disable_cascade_attention: bool = _opt(
        "decode requests sharing a cached prefix without reading its KV once per group (A/B)", False
    )
    # Tensor parallelism
    tp_size: int = _opt("tensor-parallel ranks (GPUs, or CPU processes); also --tp", 1, aliases=("--tp",))
    nnodes: int = _opt("machines the tensor-parallel ranks span", 1)
    node_rank: int = _opt("this machine's index among --nnodes (0 runs the server)", 0)
    dist_init_addr: str | None = _opt(
        "HOST:PORT of node 0's torch.distributed store (required with --nnodes > 1; default: a free local port)"
    )
    disable_custom_all_reduce: bool = _opt(
        "sum tensor-parallel partial results with NCCL only (no CUDA IPC all-reduce; CUDA graphs then stay off "
        "at tp > 1)",
        False,
    )
    # Server
    host: str = _opt("bind address", "127.0.0.1")
    port: int = _opt("bind port", 30000)
    api_key: str | None = _opt("require `Authorization: Bearer KEY` on every route but /health")
    max_request_bytes: int = _opt("largest accepted request body", 8 * 1024 * 1024)
    shutdown_timeout: float = _opt(
        "seconds SIGINT/SIGTERM waits for in-flight requests before aborting them", 5.0
    )
    log_level: str = _opt("logging level", "info", ("debug", "info", "warning", "error"))
    decode_log_interval: int = _opt(
        "decode steps between the scheduler's decode log lines (running, KV usage, output tok/s); 0: none", 40
    )

    def __post_init__(self) -> None:
        def bad(param: str, msg: str) -> InvalidRequestError:
            return InvalidRequestError(f"--{param.replace('_', '-')} {msg}", param=param)

        if self.page_size < 1:
            raise bad("page_size", f"must be >= 1, got {self.page_size}")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size < 1:
            raise bad("chunked_prefill_size", f"must be >= 1, got {self.chunked_prefill_size}")
        if self.max_running_requests is not None and self.max_running_requests < 1:
            raise bad("max_running_requests", f"must be >= 1, got {self.max_running_requests}")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise bad("max_total_tokens", f"must be >= 1, got {self.max_total_tokens}")
        if self.context_length is not None and self.context_length < 1:
            raise bad("context_length", f"must be >= 1, got {self.context_length}")
        if self.mem_fraction_static is not None and not 0.0 < self.mem_fraction_static < 1.0:
            raise bad("mem_fraction_static", f"must be in (0, 1), got {self.mem_fraction_static}")
        if self.schedule_conservativeness < 0:
            raise bad("schedule_conservativeness", f"must be >= 0, got {self.schedule_conservativeness}")
        if self.decode_log_interval < 0:
            raise bad("decode_log_interval", f"must be >= 0, got {self.decode_log_interval}")
        if self.max_queued_requests is not None and self.max_queued_requests < 1:
            raise bad("max_queued_requests", f"must be >= 1, got {self.max_queued_requests}")
        self._check_parallel(bad)

    def _check_parallel(self, bad: Any) -> None:
        if self.tp_size < 1:
            raise bad("tp_size", f"must be >= 1, got {self.tp_size}")
        if self.nnodes < 1 or self.tp_size % self.nnodes:
            raise bad("nnodes", f"must be >= 1 and divide --tp-size ({self.tp_size}), got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise bad("node_rank", f"must be in [0, {self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise bad("dist_init_addr", "is required with --nnodes > 1 (HOST:PORT of node 0)")

    @property
    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def replace(self, **changes: Any) -> ServerArgs:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown server argument(s): {', '.join(unknown)}")
        return cls(**kwargs)

    # CLI generation -------------------------------------------------------------------------------------
    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
            help_ = f.metadata.get("help", "")
            base = _base_type(hints[f.name])
            if base is bool:
                parser.add_argument(*flags, action="store_true", default=f.default, help=help_)
                continue
            kw: dict[str, Any] = {"type": base, "default": f.default, "dest": f.name}
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            shown = "" if f.default is None else f" (default: {f.default})"
            parser.add_argument(*flags, help=help_ + shown, **kw)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def cache_dir() -> str:
    """Where the default model and other downloads live (LITE_SRT_CACHE, default ~/.cache/lite_srt)."""
    return os.environ.get("LITE_SRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lite_srt")
