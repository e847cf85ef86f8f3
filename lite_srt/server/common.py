"""What every route handler shares: the per-app ServerState, body decoding, SSE writing, tokenization off-loop.

ServerState is created once per app and touched only from the event-loop thread (the tokenizer calls that go to
the thread pool read immutable tokenizer state only).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from lite_srt.config import ServerArgs
from lite_srt.engine.token_ids import bad_token_id
from lite_srt.server.errors import ApiError, bad_request, decode_error
from lite_srt.server.metrics import ServerMetrics

T = TypeVar("T")

# Tokenizing a prompt this long (characters) could stall every other stream on the loop for milliseconds,
# so it goes to a worker thread (`tokenizers` releases the GIL).
_OFFLOAD_CHARS = 8192


@dataclass
class ServerState:
    engine: Any  # lite_srt.engine.async_engine.AsyncEngine (duck-typed so tests can build apps cheaply)
    args: ServerArgs
    metrics: ServerMetrics
    model_name: str
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def context_length(self) -> int:
        return int(self.engine.context_length)

    @functools.cached_property
    def token_text(self) -> Callable[[int], str]:
        """Text of one token id as shown in logprobs (cached: the same ids recur in every response)."""

        @functools.lru_cache(maxsize=65536)
        def text(tid: int) -> str:
            return self.tokenizer.decode([tid], skip_special_tokens=False)

        return text

    def check_model(self, model: str | None) -> None:
        if model and model != self.model_name:
            raise ApiError(
                400,
                f"model {model!r} is not served here; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_token_ids(self, ids: list[Any], param: str) -> list[int]:
        vocab = int(self.tokenizer.vocab_size)
        bad = bad_token_id(ids, vocab)
        if bad is not None:
            raise bad_request(f"{param} must hold token ids in [0, {vocab}), got {bad[0]!r}", param=param)
        return ids


STATE: web.AppKey[ServerState] = web.AppKey("lite_srt_state", ServerState)
# Set on a request once its SSE headers went out: an error after that point can no longer be a JSON response.
# (aiohttp >= 3.12 wants a typed RequestKey; older releases take a plain string.)
SSE_RESPONSE: Any = (
    web.RequestKey("lite_srt_sse_response", web.StreamResponse)
    if hasattr(web, "RequestKey")
    else "lite_srt_sse_response"
)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]


async def read_json(request: web.Request, typ: type[T]) -> T:
    """Decode the body into `typ`; every way it can be wrong becomes a 400 naming what is wrong."""
    limit = state_of(request).args.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise _too_large(None, limit) from e
    if len(body) > limit:
        raise _too_large(len(body), limit)
    if not body.strip():
        raise bad_request("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"request body is not valid UTF-8 (byte {e.start})", code="invalid_utf8") from e
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.MsgspecError as e:
        raise decode_error(e) from e


def _too_large(size: int | None, limit: int) -> ApiError:
    got = f" ({size} bytes)" if size is not None else ""
    return bad_request(
        f"request body is too large{got}; the limit is {limit} bytes (--max-request-bytes)",
        code="request_too_large",
    )


async def off_loop(fn: Callable[..., T], *args: Any, size: int = 0) -> T:
    """Run a tokenizer call inline, or in the default thread pool when the input is big enough to stall the loop."""
    if size < _OFFLOAD_CHARS:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


class SSEWriter:
    """Server-sent events: `data: <json>\\n\\n` chunks ending with `data: [DONE]`."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )

    async def start(self) -> None:
        await self.response.prepare(self._request)
        self._request[SSE_RESPONSE] = self.response

    async def send(self, obj: Any) -> None:
        await self.response.write(b"data: " + msgspec.json.encode(obj) + b"\n\n")

    async def done(self) -> web.StreamResponse:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
        return self.response
