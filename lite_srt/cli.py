"""`lite-srt` command line: serve | generate. Flags come from ServerArgs (lite_srt/config.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lite_srt.config import ServerArgs
from lite_srt.errors import LiteSrtError
from lite_srt.sampling_params import SamplingParams

_SAMPLING_FLAGS: dict[str, type] = {
    "max_new_tokens": int,
    "min_new_tokens": int,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "repetition_penalty": float,
    "frequency_penalty": float,
    "presence_penalty": float,
    "seed": int,
    "n": int,
    "top_logprobs": int,
}


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text for one prompt offline and print it",
        description="Run the engine offline on one prompt (no server).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user message in the chat template"
    )
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past EOS")
    p.add_argument("--logprobs", action="store_true", help="print the chosen tokens' logprobs")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    group = p.add_argument_group("sampling")
    for name, typ in _SAMPLING_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), type=typ, default=None, dest=name)
    # --seed here seeds the request (a sampling flag); the engine's own seed keeps its default.
    ServerArgs.add_cli_args(
        p.add_argument_group("engine"),
        skip=("seed", "host", "port", "api_key", "max_request_bytes", "shutdown_timeout"),
    )
    p.set_defaults(func=_run_generate)


def _run_generate(ns: argparse.Namespace) -> int:
    from lite_srt.engine.engine import Engine

    params = {k: getattr(ns, k) for k in _SAMPLING_FLAGS if getattr(ns, k) is not None}
    if ns.stop:
        params["stop"] = ns.stop
    if ns.ignore_eos:
        params["ignore_eos"] = True
    if ns.logprobs:
        params["logprobs"] = True
    SamplingParams.from_dict(params)  # fail on bad values before loading the model
    engine = Engine(**{k: v for k, v in vars(ServerArgs.from_cli_args(ns)).items()})
    try:
        if ns.chat:
            ids = engine.tokenizer.encode_chat([{"role": "user", "content": ns.prompt}])
            out = engine.generate(input_ids=ids, sampling_params=params)
        else:
            out = engine.generate(prompt=ns.prompt, sampling_params=params)
    finally:
        engine.shutdown()
    outs = out if isinstance(out, list) else [out]
    if ns.json:
        print(json.dumps(outs if len(outs) > 1 else outs[0], ensure_ascii=False, indent=2))
    else:
        for o in outs:
            print(o["text"])
            m = o["meta_info"]
            print(f"[{m['completion_tokens']} tokens, finish: {m['finish_reason']['type']}]", file=sys.stderr)
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    try:
        from lite_srt.server.launch import add_serve_subcommand
    except ImportError:  # the server package is optional for offline use
        return
    add_serve_subcommand(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lite-srt",
        description="lite_srt: a small, fast LLM serving runtime. With no --model-path it uses the embedded "
        "default model, SmolLM2-135M-Instruct.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,generate}", required=True)
    _add_serve(sub)
    _add_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(ns, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(ns.func(ns) or 0)
    except LiteSrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
