"""Native routes: /generate (as Engine.generate, over HTTP), health, model/server info, flush_cache, abort_request,
start_profile / stop_profile.

`/generate` takes engine-native sampling parameter names (SamplingParams fields) and returns what the offline
Engine returns: `{"text", "output_ids", "meta_info"}` per sample. Event-loop only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
from typing import Any

from aiohttp import web

from lite_srt.engine.io import GenerateRequest, RequestOutput
from lite_srt.errors import ContextLengthExceededError
from lite_srt.sampling_params import SamplingParams
from lite_srt.server.common import ServerState, SSEWriter, off_loop, read_json, state_of
from lite_srt.server.errors import ApiError, bad_request, json_response
from lite_srt.server.openai_api import MAX_CHOICES
from lite_srt.server.protocol import AbortRequest, GenerateReqInput, ProfileRequest, SuccessResponse
from lite_srt.server.streams import RequestGroup

_HEALTH_GENERATE_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------------------
# /generate
# ---------------------------------------------------------------------------------------------------------


async def _prompts(st: ServerState, body: GenerateReqInput) -> tuple[list[list[int]], bool]:
    """Token ids of each prompt and whether the call is a batch (lists in, list out)."""
    if (body.text is None) == (body.input_ids is None):
        raise bad_request("give exactly one of text or input_ids", param="text")
    if isinstance(body.text, str):
        return [await _encode(st, body.text)], False
    if body.text is not None:
        if not body.text:
            raise bad_request("text must not be an empty list", param="text")
        return [await _encode(st, t) for t in body.text], True
    ids = body.input_ids or []
    if not ids:
        raise bad_request("input_ids must not be empty", param="input_ids")
    if all(isinstance(x, list) for x in ids):
        for x in ids:
            if not x:
                raise bad_request("input_ids must not hold an empty list", param="input_ids")
        return [st.check_token_ids(x, "input_ids") for x in ids], True
    return [st.check_token_ids(ids, "input_ids")], False


async def _encode(st: ServerState, text: str) -> list[int]:
    if not text:
        raise bad_request("text must not be empty", param="text")
    return await off_loop(st.tokenizer.encode, text, size=len(text))


def _per_prompt(value: Any, count: int, param: str, batch: bool) -> list[Any]:
    """Spread a single value over a batch, or check a list has one entry per prompt."""
    if isinstance(value, list):
        if not batch or len(value) != count:
            raise bad_request(
                f"{param} must be one value or a list with one entry per prompt ({count})", param=param
            )
        return value
    return [value] * count


def _native_params(
    st: ServerState, d: dict[str, Any] | None, body: GenerateReqInput, prompt_len: int
) -> SamplingParams:
    p = SamplingParams.from_dict(d)
    if body.return_logprob:
        p.logprobs, p.top_logprobs = True, body.top_logprobs_num
        p.validate()
    ctx = st.context_length
    if prompt_len >= ctx:
        raise ContextLengthExceededError(
            f"the prompt has {prompt_len} tokens, but the context length is {ctx}", param="input_ids"
        )
    if prompt_len + p.max_new_tokens > ctx:
        raise ContextLengthExceededError(
            f"max_new_tokens={p.max_new_tokens} plus the prompt's {prompt_len} tokens exceeds the context length "
            f"of {ctx}",
            param="max_new_tokens",
        )
    return p


def _result(out: RequestOutput, index: int) -> dict[str, Any]:
    return {"text": out.text, "output_ids": out.output_ids, "meta_info": out.meta_info(), "index": index}


async def generate(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    body = await read_json(request, GenerateReqInput)
    prompts, batch = await _prompts(st, body)
    sps = _per_prompt(body.sampling_params, len(prompts), "sampling_params", batch)
    rids = _per_prompt(body.rid, len(prompts), "rid", batch)
    if batch and isinstance(body.rid, str):
        raise bad_request("a batch needs one rid per prompt", param="rid")
    reqs = [
        GenerateRequest(ids, _native_params(st, sp, body, len(ids)), rid=rid)
        for ids, sp, rid in zip(prompts, sps, rids, strict=True)
    ]
    if sum(r.sampling_params.n for r in reqs) > MAX_CHOICES:
        raise bad_request(
            f"a call may run at most {MAX_CHOICES} sequences (prompts x n)", param="sampling_params"
        )
    offsets = [0]
    for r in reqs:
        offsets.append(offsets[-1] + r.sampling_params.n)
    group = RequestGroup(st.engine, reqs, st.metrics)
    if body.stream:
        sse = SSEWriter(request)
        async with group:
            await sse.start()
            async for i, out in group.outputs():
                await sse.send(_result(out, offsets[i] + out.index))
        return await sse.done()
    finals: dict[int, dict[str, Any]] = {}
    async with group:
        async for i, out in group.outputs():
            if out.finished:
                finals[offsets[i] + out.index] = _result(out, offsets[i] + out.index)
    results = [finals[k] for k in sorted(finals)]
    return json_response(results if batch or len(results) > 1 else results[0])


# ---------------------------------------------------------------------------------------------------------
# Health, info, control
# ---------------------------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """200 while the engine runs; stats() raising (EngineDeadError -> 503) means the scheduler has died."""
    state_of(request).engine.stats()
    return json_response({"status": "ok"})


async def health_generate(request: web.Request) -> web.Response:
    """A real one-token generation: proves the scheduler and the forward thread are alive."""
    st = state_of(request)
    ids = st.tokenizer.encode("Hello", add_special_tokens=True) or [0]
    req = GenerateRequest(ids, SamplingParams(max_new_tokens=1, temperature=0.0))
    try:
        await asyncio.wait_for(
            _run_to_end(RequestGroup(st.engine, [req], st.metrics)), _HEALTH_GENERATE_TIMEOUT_S
        )
    except asyncio.TimeoutError as e:
        raise ApiError(
            503,
            f"health generation did not finish in {_HEALTH_GENERATE_TIMEOUT_S:.0f} s",
            type="server_error",
        ) from e
    return json_response({"status": "ok"})


async def _run_to_end(group: RequestGroup) -> None:
    async with group:
        async for _, out in group.outputs():
            if out.finished and out.finish_reason is not None and out.finish_reason.type == "abort":
                raise ApiError(503, "health generation was aborted", type="server_error")


def _jsonable(obj: Any) -> Any:
    """A JSON-safe view of a config object (dataclass or plain object); other values become strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif hasattr(obj, "__dict__") and not isinstance(obj, dict):
        obj = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


async def get_model_info(request: web.Request) -> web.Response:
    st = state_of(request)
    return json_response(
        {
            "model_path": st.args.model_path,
            "tokenizer_path": st.args.tokenizer_path or st.args.model_path,
            "served_model_name": st.model_name,
            "is_generation": True,
            "context_length": st.context_length,
            "vocab_size": int(st.tokenizer.vocab_size),
            "max_total_tokens": int(st.engine.max_total_tokens),
            "model_config": _jsonable(getattr(st.engine, "model_config", None)),
        }
    )


async def get_server_info(request: web.Request) -> web.Response:
    st = state_of(request)
    args = _jsonable(st.args)
    if args.get("api_key"):
        args["api_key"] = "<redacted>"
    try:
        version = importlib.metadata.version("lite_srt")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return json_response(
        {
            "version": version,
            "server_args": args,
            "served_model_name": st.model_name,
            "context_length": st.context_length,
            "max_total_tokens": int(st.engine.max_total_tokens),
            "stats": _jsonable(st.engine.stats()),
        }
    )


async def flush_cache(request: web.Request) -> web.Response:
    st = state_of(request)
    if not await st.engine.flush_cache():
        raise ApiError(
            409,
            "the prefix cache was not flushed: requests are running; retry when idle",
            code="requests_running",
        )
    return json_response(SuccessResponse(success=True, message="prefix cache flushed"))


async def abort_request(request: web.Request) -> web.Response:
    st = state_of(request)
    body = await read_json(request, AbortRequest)
    found = st.engine.abort(body.rid)
    return json_response(
        SuccessResponse(success=bool(found), message="" if found else f"no live request {body.rid!r}")
    )


async def start_profile(request: web.Request) -> web.Response:
    """Start a torch.profiler trace of the forward thread (body optional: {"output_dir": ...})."""
    st = state_of(request)
    body = await read_json(request, ProfileRequest) if request.can_read_body else ProfileRequest()
    try:
        out = await st.engine.start_profile(body.output_dir)
    except ValueError as e:
        raise bad_request(str(e), code="profile_state") from e
    return json_response(SuccessResponse(success=True, message=f"profiling; the trace goes to {out}"))


async def stop_profile(request: web.Request) -> web.Response:
    st = state_of(request)
    try:
        path = await st.engine.stop_profile()
    except ValueError as e:
        raise bad_request(str(e), code="profile_state") from e
    return json_response(SuccessResponse(success=True, message=path))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/generate", generate)
    app.router.add_get("/health", health)
    app.router.add_get("/health_generate", health_generate)
    app.router.add_get("/get_model_info", get_model_info)
    app.router.add_get("/get_server_info", get_server_info)
    app.router.add_post("/flush_cache", flush_cache)
    app.router.add_post("/abort_request", abort_request)
    app.router.add_post("/start_profile", start_profile)
    app.router.add_post("/stop_profile", stop_profile)
