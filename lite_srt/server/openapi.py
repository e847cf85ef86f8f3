"""The OpenAPI 3.1 document served at /openapi.json, generated from the protocol structs (one source of truth).

`ROUTES` lists every route the app registers; app.py checks at build time that none is missing from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from lite_srt.server import protocol as p


@dataclass(frozen=True)
class RouteDoc:
    method: str
    path: str
    summary: str
    request: type | None = None
    response: type | None = None
    streams: bool = False  # answers text/event-stream when the body says "stream": true


ROUTES: tuple[RouteDoc, ...] = (
    RouteDoc(
        "POST",
        "/v1/chat/completions",
        "OpenAI chat completion (SSE when stream=true)",
        p.ChatCompletionRequest,
        p.ChatCompletionResponse,
        streams=True,
    ),
    RouteDoc(
        "POST",
        "/v1/completions",
        "OpenAI text completion (SSE when stream=true)",
        p.CompletionRequest,
        p.CompletionResponse,
        streams=True,
    ),
    RouteDoc("GET", "/v1/models", "The served model", None, p.ModelList),
    RouteDoc(
        "POST",
        "/v1/tokenize",
        "Token ids of a prompt or of chat messages",
        p.TokenizeRequest,
        p.TokenizeResponse,
    ),
    RouteDoc("POST", "/v1/detokenize", "Text of token ids", p.DetokenizeRequest, p.DetokenizeResponse),
    RouteDoc(
        "POST",
        "/generate",
        "Native generation, as Engine.generate (a list for batches or n > 1)",
        p.GenerateReqInput,
        p.GenerateResult,
        streams=True,
    ),
    RouteDoc("GET", "/health", "200 once the model is loaded (never needs the API key)"),
    RouteDoc("GET", "/health_generate", "200 after a real one-token generation"),
    RouteDoc("GET", "/get_model_info", "Model path, context length, vocabulary size, model config"),
    RouteDoc("GET", "/get_server_info", "Server arguments (API key redacted) and engine statistics"),
    RouteDoc(
        "POST", "/flush_cache", "Empty the prefix cache (409 while requests run)", None, p.SuccessResponse
    ),
    RouteDoc("POST", "/abort_request", "Abort a live request by rid", p.AbortRequest, p.SuccessResponse),
    RouteDoc(
        "POST",
        "/start_profile",
        "Start a torch.profiler trace of the forward thread (body optional)",
        p.ProfileRequest,
        p.SuccessResponse,
    ),
    RouteDoc(
        "POST", "/stop_profile", "Stop the trace; message: the trace file's path", None, p.SuccessResponse
    ),
    RouteDoc("GET", "/metrics", "Prometheus text format"),
    RouteDoc("GET", "/openapi.json", "This document"),
)

_REF = "#/components/schemas/{name}"


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(r: RouteDoc, schemas: dict[type, dict[str, Any]]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if r.response is not None:
        ok["content"] = _json_content(schemas[r.response])
        if r.streams:
            ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {
        "summary": r.summary,
        "responses": {
            "200": ok,
            "400": {
                "description": "Invalid request",
                "content": _json_content({"$ref": _REF.format(name="ErrorResponse")}),
            },
            "401": {"description": "Missing or wrong API key (when --api-key is set)"},
            "503": {"description": "Queue full (--max-queued-requests) or engine stopped"},
        },
    }
    if r.request is not None:
        op["requestBody"] = {"required": True, "content": _json_content(schemas[r.request])}
    return op


def openapi_document(title: str = "lite_srt", version: str = "0.1.0") -> dict[str, Any]:
    types = sorted(
        {t for r in ROUTES for t in (r.request, r.response) if t is not None} | {p.ErrorResponse},
        key=lambda t: t.__name__,
    )
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    schemas = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
