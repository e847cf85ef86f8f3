"""`lite-srt serve`: build the engine, run the aiohttp app on uvloop, shut down cleanly on SIGINT/SIGTERM.

Shutdown order: stop accepting connections, let in-flight requests finish for up to --shutdown-timeout seconds
(a second signal skips the wait), then abort the rest (their streams end), close connections and stop the
engine's forward thread. `add_serve_subcommand` is what lite_srt/cli.py wires in.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from aiohttp import web

from lite_srt.config import ServerArgs

logger = logging.getLogger("lite_srt.server")

_DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
_SERVE_DESCRIPTION = """\
Serve a model over HTTP: OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models,
/v1/tokenize, /v1/detokenize, and native /generate, /health, /metrics, /openapi.json (see docs/API.md).
With no --model-path it serves the embedded default model, SmolLM2-135M-Instruct.
Use --port 0 to pick a free port; the URL is logged once the server listens."""


def add_serve_subcommand(subparsers: Any) -> None:
    """Add `serve` to the `lite-srt` CLI; its flags are generated from ServerArgs."""
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI-compatible + native API)",
        description=_SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ServerArgs.add_cli_args(p)
    p.set_defaults(func=_serve_from_namespace)


def _serve_from_namespace(ns: argparse.Namespace) -> None:
    run_server(ServerArgs.from_cli_args(ns))


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # One line per request at info level would drown the useful logs under load.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _bind(host: str, port: int) -> socket.socket:
    """Bind before serving so `--port 0` resolves to a real port we can log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(f"lite-srt serve: cannot bind {host}:{port}: {e.strerror}") from e
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(args: ServerArgs) -> None:
    """Blocking: load the model, serve until SIGINT/SIGTERM, then exit cleanly."""
    _configure_logging(args.log_level)
    if args.node_rank > 0:  # another machine of a multi-node tensor-parallel group: workers only, no server
        from lite_srt.distributed.launch import run_node

        sys.exit(run_node(args))
    from lite_srt.engine.async_engine import AsyncEngine

    t0 = time.perf_counter()
    engine = AsyncEngine(args)
    _log_loaded(engine, time.perf_counter() - t0)
    sock = _bind(args.host, args.port)
    try:
        import uvloop

        uvloop.run(_serve(engine, args, sock))
    except ImportError:
        asyncio.run(_serve(engine, args, sock))
    logger.info("server stopped")


def _log_loaded(engine: Any, seconds: float) -> None:
    cfg = engine.model_config
    arch = getattr(cfg, "architecture", None) or getattr(cfg, "architectures", None) or type(cfg).__name__
    path = getattr(engine, "model_path", None) or engine.args.model_path
    logger.info(
        "loaded %s (%s) from %s in %.1f s on %s",
        engine.model_name,
        arch,
        path,
        seconds,
        engine.args.resolved_device,
    )
    logger.info(
        "KV capacity: %d tokens; context length: %d tokens", engine.max_total_tokens, engine.context_length
    )


async def _serve(engine: Any, args: ServerArgs, sock: socket.socket) -> None:
    from lite_srt.server.app import build_app

    app = build_app(engine, args)
    _exit_on_fatal(engine)
    # handler_cancellation: a client that disconnects cancels its handler, which aborts its request at once
    # (without it, a non-streaming request would keep its KV until it finished).
    access_log = (
        logger.getChild("access") if args.log_level == "debug" else None
    )  # a line per request is noise
    runner = web.AppRunner(app, handler_cancellation=True, access_log=access_log)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    if args.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without --api-key: anyone who can reach it can use it", args.host)
    logger.info("serving %s on %s (OpenAI API at %s/v1)", engine.model_name, _url(sock), _url(sock))
    signals = _SignalCounter()
    await signals.first.wait()
    logger.info("shutting down: no new connections; waiting for in-flight requests (signal again to abort)")
    await site.stop()
    await _drain(engine, getattr(args, "shutdown_timeout", _DEFAULT_SHUTDOWN_TIMEOUT_S), signals.second)
    await runner.cleanup()  # on_shutdown aborts what is left, then connections close and the engine stops


def _exit_on_fatal(engine: Any) -> None:
    """A dead tensor-parallel rank: the engine failed every request; give their responses a moment to go
    out, then exit non-zero (the forward thread may be stuck in a collective, so no graceful shutdown)."""
    loop = asyncio.get_running_loop()

    def hard_exit() -> None:
        if engine.workers is not None:
            engine.workers.stop(timeout=0)
        logging.shutdown()
        os._exit(1)

    def on_fatal(message: str) -> None:
        logger.error("exiting: %s", message)
        loop.call_later(1.0, hard_exit)

    engine.on_fatal = on_fatal


class _SignalCounter:
    """SIGINT/SIGTERM: the first asks for a graceful stop, the second for an immediate one."""

    def __init__(self) -> None:
        self.first, self.second = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        (self.second if self.first.is_set() else self.first).set()


async def _drain(engine: Any, timeout: float, abort_now: asyncio.Event) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not abort_now.is_set():
        try:
            s = engine.stats()
        except Exception:  # the engine already stopped: nothing left to drain
            return
        if s.num_running == 0 and s.num_waiting == 0:
            return
        await asyncio.sleep(0.05)
    logger.info("aborting requests still in flight")


def main(argv: list[str] | None = None) -> None:
    """`python -m lite_srt.server.launch [flags]`: the same as `lite-srt serve [flags]`."""
    parser = argparse.ArgumentParser(prog="lite-srt")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_subcommand(sub)
    ns = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    ns.func(ns)


if __name__ == "__main__":
    main()
