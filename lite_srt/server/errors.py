"""HTTP error mapping: exceptions -> status code + OpenAI-style body `{"error": {message, type, param, code}}`.

`ApiError` is what handlers raise for problems only the HTTP layer can see (body too large, bad JSON, unknown
model); engine exceptions from lite_srt/errors.py are mapped by `error_response`. Stateless.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec
from aiohttp import web

from lite_srt.errors import (
    ContextLengthExceededError,
    EngineDeadError,
    InvalidRequestError,
    LiteSrtError,
    QueueFullError,
    TokenizerError,
)
from lite_srt.server.protocol import ErrorInfo, ErrorResponse

# SamplingParams names its fields the engine's way; OpenAI clients know them by these names.
_OPENAI_PARAM_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def json_response(body: msgspec.Struct | dict | list, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


def error_body(err: ApiError) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=err.message, type=err.type, param=err.param, code=err.code))


def to_api_error(exc: BaseException, openai_names: bool = True) -> ApiError | None:
    """The ApiError an exception maps to; None for an unexpected exception (a 500, logged by the caller)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidRequestError):
        param = exc.param
        if openai_names and param in _OPENAI_PARAM_NAMES:
            param = _OPENAI_PARAM_NAMES[param]
        code = "context_length_exceeded" if isinstance(exc, ContextLengthExceededError) else None
        return ApiError(400, str(exc), param=param, code=code)
    if isinstance(exc, TokenizerError):
        return ApiError(400, str(exc), code="tokenizer_error")
    if isinstance(exc, QueueFullError):
        return ApiError(
            503, str(exc) or "the waiting queue is full", type="server_overloaded", code="queue_full"
        )
    if isinstance(exc, EngineDeadError):
        return ApiError(503, str(exc) or "the engine has stopped", type="server_error", code="engine_dead")
    if isinstance(exc, LiteSrtError):
        return ApiError(500, str(exc), type="server_error")
    return None


_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_FIELD_RE = re.compile(r"field `([^`]+)`")


def decode_error(exc: msgspec.MsgspecError) -> ApiError:
    """A 400 for a body msgspec could not decode, naming the offending field when msgspec tells us which."""
    msg = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        m = _PATH_RE.search(msg) or _FIELD_RE.search(msg)
        param = m.group(1) if m and m.group(1) else None
        return bad_request(f"invalid request body: {msg}", param=param)
    return bad_request(f"malformed JSON body: {msg}", code="invalid_json")
