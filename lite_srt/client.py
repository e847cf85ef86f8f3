"""AsyncClient: an asyncio client of a lite_srt server (native /generate and the OpenAI-compatible routes).

Results are the server's own msgspec response structs (lite_srt/server/protocol.py), so client and server
cannot disagree on a field. A non-2xx answer, or an error event inside a stream, raises `APIError` carrying the
HTTP status and the server's message. One client owns one aiohttp session; use it from one event loop.

    async with AsyncClient("http://127.0.0.1:30000") as c:
        out = await c.generate("The capital of France is", sampling_params={"max_new_tokens": 8})
        async for chunk in c.chat_stream([{"role": "user", "content": "Hi"}], max_tokens=16):
            ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import msgspec

from lite_srt.server.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionResponse,
    ErrorResponse,
    GenerateResult,
    ModelCard,
    ModelList,
)

T = TypeVar("T")
Prompt = str | list[str] | list[int] | list[list[int]]


class APIError(Exception):
    """The server answered an error: `status` is the HTTP status (200 for an error sent inside a stream)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def _api_error(status: int, body: bytes) -> APIError:
    try:
        err = msgspec.json.decode(body, type=ErrorResponse).error
        return APIError(status, err.message, err.type, err.param, err.code)
    except msgspec.MsgspecError:
        return APIError(status, body.decode("utf-8", "replace")[:1000] or f"HTTP {status}")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class AsyncClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncClient:
        self._ensure_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: a benchmark may hold hundreds of streams open at once.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers=self._headers, connector=aiohttp.TCPConnector(limit=0)
            )
        return self._session

    # -- transport ---------------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        data = msgspec.json.encode(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with self._ensure_session().request(
            method, self.base_url + path, data=data, headers=headers
        ) as r:
            raw = await r.read()
            if r.status >= 400:
                raise _api_error(r.status, raw)
            return raw

    async def _json(self, method: str, path: str, typ: type[T], body: dict[str, Any] | None = None) -> T:
        return msgspec.json.decode(await self._request(method, path, body), type=typ)

    async def _sse(self, path: str, body: dict[str, Any], typ: type[T]) -> AsyncIterator[T]:
        """Decode `data:` events until `[DONE]`. Leaving the loop early closes the connection (the server aborts)."""
        data = msgspec.json.encode(body)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        async with self._ensure_session().post(self.base_url + path, data=data, headers=headers) as r:
            if r.status >= 400:
                raise _api_error(r.status, await r.read())
            async for line in r.content:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                if payload.startswith(b'{"error"'):
                    raise _api_error(200, payload)
                yield msgspec.json.decode(payload, type=typ)

    # -- native API --------------------------------------------------------------------------------------
    def _generate_body(
        self,
        text: str | list[str] | None,
        input_ids: list[int] | list[list[int]] | None,
        sampling_params: dict[str, Any] | list[dict[str, Any]] | None,
        return_logprob: bool,
        top_logprobs_num: int,
        rid: str | list[str] | None,
        stream: bool,
    ) -> dict[str, Any]:
        return _drop_none(
            {
                "text": text,
                "input_ids": input_ids,
                "sampling_params": sampling_params,
                "return_logprob": return_logprob,
                "top_logprobs_num": top_logprobs_num,
                "rid": rid,
                "stream": stream,
            }
        )

    async def generate(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int = 0,
        rid: str | list[str] | None = None,
    ) -> GenerateResult | list[GenerateResult]:
        """POST /generate. One result for one prompt with n=1; a list for a batch or n > 1."""
        body = self._generate_body(
            text, input_ids, sampling_params, return_logprob, top_logprobs_num, rid, False
        )
        raw = await self._request("POST", "/generate", body)
        return msgspec.json.decode(raw, type=GenerateResult | list[GenerateResult])

    def stream(
        self,
        text: str | list[str] | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None,
        return_logprob: bool = False,
        top_logprobs_num: int = 0,
        rid: str | list[str] | None = None,
    ) -> AsyncIterator[GenerateResult]:
        """Streamed /generate: each chunk carries the cumulative text/output_ids of sample `index`."""
        body = self._generate_body(
            text, input_ids, sampling_params, return_logprob, top_logprobs_num, rid, True
        )
        return self._sse("/generate", body, GenerateResult)

    async def abort(self, rid: str) -> bool:
        raw = await self._request("POST", "/abort_request", {"rid": rid})
        return bool(msgspec.json.decode(raw).get("success"))

    async def flush_cache(self) -> bool:
        try:
            await self._request("POST", "/flush_cache")
        except APIError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def start_profile(self, output_dir: str | None = None) -> None:
        """Start a torch.profiler trace of the server's forward thread (APIError 400 if one is running)."""
        await self._request("POST", "/start_profile", {"output_dir": output_dir} if output_dir else None)

    async def stop_profile(self) -> str:
        """Stop the trace; returns the path of the Chrome trace the server wrote."""
        return msgspec.json.decode(await self._request("POST", "/stop_profile"))["message"]

    # -- OpenAI-compatible API ---------------------------------------------------------------------------
    async def chat(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> ChatCompletionResponse:
        """POST /v1/chat/completions; `params` are the request's other fields (max_tokens, n, stop, ...)."""
        body = _drop_none({"model": model, "messages": messages, **params, "stream": False})
        return await self._json("POST", "/v1/chat/completions", ChatCompletionResponse, body)

    def chat_stream(
        self, messages: list[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> AsyncIterator[ChatCompletionChunk]:
        body = _drop_none({"model": model, "messages": messages, **params, "stream": True})
        return self._sse("/v1/chat/completions", body, ChatCompletionChunk)

    async def complete(
        self, prompt: Prompt, *, model: str | None = None, **params: Any
    ) -> CompletionResponse:
        """POST /v1/completions; `prompt` may be text, token ids, or a batch of either."""
        body = _drop_none({"model": model, "prompt": prompt, **params, "stream": False})
        return await self._json("POST", "/v1/completions", CompletionResponse, body)

    def complete_stream(
        self, prompt: Prompt, *, model: str | None = None, **params: Any
    ) -> AsyncIterator[CompletionChunk]:
        body = _drop_none({"model": model, "prompt": prompt, **params, "stream": True})
        return self._sse("/v1/completions", body, CompletionChunk)

    async def tokenize(self, prompt: str) -> list[int]:
        return list(
            msgspec.json.decode(await self._request("POST", "/v1/tokenize", {"prompt": prompt}))["tokens"]
        )

    async def detokenize(self, tokens: list[int]) -> str:
        return str(
            msgspec.json.decode(await self._request("POST", "/v1/detokenize", {"tokens": tokens}))["prompt"]
        )

    # -- health, models, metrics -------------------------------------------------------------------------
    async def health(self) -> bool:
        """True when the server answers /health with 200; False when it cannot be reached or is not ready."""
        try:
            await self._request("GET", "/health")
        except (APIError, aiohttp.ClientError, TimeoutError):
            return False
        return True

    async def models(self) -> list[ModelCard]:
        return (await self._json("GET", "/v1/models", ModelList)).data

    async def model_info(self) -> dict[str, Any]:
        return msgspec.json.decode(await self._request("GET", "/get_model_info"))

    async def server_info(self) -> dict[str, Any]:
        return msgspec.json.decode(await self._request("GET", "/get_server_info"))

    async def metrics(self) -> dict[str, float]:
        """Prometheus samples by name with labels, e.g. `lite_srt_prompt_tokens_total` or `...{le="0.1"}`."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self._request("GET", "/metrics")).decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out
