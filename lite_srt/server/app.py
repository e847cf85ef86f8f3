"""The aiohttp application: routes, middlewares (errors -> JSON, API key), metrics, engine lifecycle hooks.

The app runs on the same event loop as the engine's scheduler: `on_startup` starts the engine, `on_shutdown`
aborts whatever is in flight so streaming handlers end promptly. All state hangs off the app (ServerState under
STATE), so two apps in one process share nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from lite_srt.config import ServerArgs
from lite_srt.server import native_api, openai_api
from lite_srt.server.common import SSE_RESPONSE, STATE, ServerState, state_of
from lite_srt.server.errors import ApiError, error_body, json_response, to_api_error
from lite_srt.server.metrics import ServerMetrics
from lite_srt.server.openapi import ROUTES, openapi_document

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NO_AUTH_PATHS = frozenset({"/health"})
_HTTP_ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def _error_after_stream_started(request: web.Request, resp: web.StreamResponse, err: ApiError) -> None:
    """Headers are gone already: report the error as a final SSE event, if the client is still there."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    try:
        await resp.write(b"data: " + msgspec.json.encode(error_body(err)) + b"\n\ndata: [DONE]\n\n")
    except (ConnectionError, RuntimeError):
        pass


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an OpenAI-style JSON error; the server itself keeps serving."""
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        if e.status < 400:
            raise
        err = ApiError(
            e.status,
            e.reason if e.status != 413 else "request body is too large",
            type=_HTTP_ERROR_TYPES.get(e.status, "invalid_request_error"),
        )
        return json_response(error_body(err), e.status)
    except ConnectionError:
        # The client went away mid-stream; the RequestGroup has already aborted its requests.
        status = 499
        started = request.get(SSE_RESPONSE)
        if started is not None:
            return started
        raise
    except asyncio.CancelledError:
        status = 499  # the client disconnected and aiohttp cancelled the handler (handler_cancellation)
        raise
    except Exception as e:
        err = to_api_error(e, openai_names=request.path.startswith("/v1/"))
        if err is None:
            logger.exception("unhandled error in %s %s", request.method, request.path)
            err = ApiError(500, f"internal server error: {type(e).__name__}: {e}", type="server_error")
        status = err.status
        started = request.get(SSE_RESPONSE)
        if started is not None:
            await _error_after_stream_started(request, started, err)
            return started
        return json_response(error_body(err), err.status)
    finally:
        request.app[STATE].metrics.http_requests.labels(_route_label(request), str(status)).inc()


def auth_middleware(api_key: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _NO_AUTH_PATHS:
            got = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(got, expected):  # constant time: the key must not leak via timing
                raise ApiError(
                    401,
                    "missing or invalid API key: send `Authorization: Bearer <key>`",
                    type="authentication_error",
                    code="invalid_api_key",
                )
        return await handler(request)

    return auth


async def metrics_route(request: web.Request) -> web.Response:
    body = state_of(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_route(request: web.Request) -> web.Response:
    return json_response(openapi_document())


def _check_routes_documented(app: web.Application) -> None:
    documented = {(r.method, r.path) for r in ROUTES}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        key = (route.method, route.resource.canonical)
        if key not in documented:
            raise RuntimeError(f"route {key} is missing from lite_srt/server/openapi.py ROUTES")


def build_app(engine: Any, args: ServerArgs | None = None) -> web.Application:
    """The app serving `engine` (an AsyncEngine). Starting the app starts the engine; shutting it down aborts."""
    args = args or engine.args
    middlewares = [error_middleware] + ([auth_middleware(args.api_key)] if args.api_key else [])
    app = web.Application(middlewares=middlewares, client_max_size=args.max_request_bytes)
    app[STATE] = ServerState(
        engine=engine, args=args, metrics=ServerMetrics.create(engine.stats), model_name=engine.model_name
    )
    openai_api.add_routes(app)
    native_api.add_routes(app)
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/openapi.json", openapi_route)
    _check_routes_documented(app)

    async def start_engine(_: web.Application) -> None:
        await engine.start()

    async def stop_engine(_: web.Application) -> None:
        await engine.shutdown()

    app.on_startup.append(start_engine)
    app.on_shutdown.append(stop_engine)
    return app


__all__ = ["build_app", "ServerState"]
