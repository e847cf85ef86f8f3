"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /v1/tokenize, /v1/detokenize.

Handlers turn a request struct into GenerateRequests (validating everything before the engine sees it), run
them through a RequestGroup, and shape the outputs into OpenAI response or SSE chunk structs. Event-loop only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lite_srt.engine.io import GenerateRequest, RequestOutput, TokenLogprob
from lite_srt.errors import ContextLengthExceededError
from lite_srt.sampling_params import MAX_N, MAX_TOP_LOGPROBS, SamplingParams
from lite_srt.server.common import ServerState, SSEWriter, off_loop, read_json, state_of
from lite_srt.server.errors import ApiError, bad_request, error_body, json_response
from lite_srt.server.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatResponseMessage,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TokenizeRequest,
    TokenizeResponse,
    TopLogprob,
    Usage,
    _SamplingFields,
)
from lite_srt.server.streams import RequestGroup, new_rid

# One HTTP call may not fan out into more sequences than this (prompts x n): it would crowd out everyone else.
MAX_CHOICES = 256
_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


# ---------------------------------------------------------------------------------------------------------
# Request -> engine
# ---------------------------------------------------------------------------------------------------------


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template wants them; text parts of list contents are joined with newlines."""
    if not messages:
        raise bad_request("messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if m.role not in _CHAT_ROLES:
            raise bad_request(
                f"messages[{i}].role must be one of {', '.join(_CHAT_ROLES)}; got {m.role!r}",
                param=f"messages[{i}].role",
            )
        out.append({"role": m.role, "content": _content_text(m, i)})
    return out


def _content_text(m: ChatMessage, i: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    texts = []
    for j, part in enumerate(m.content):
        if part.type != "text" or part.text is None:
            raise bad_request(
                f"messages[{i}].content[{j}] has type {part.type!r}; only text parts are supported",
                param=f"messages[{i}].content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def resolve_max_tokens(
    st: ServerState,
    requested: int | None,
    prompt_len: int,
    param: str,
    prompt_param: str,
    default: int | None = None,
) -> int:
    """max_new_tokens for a prompt: what was asked, else the default or the room left in the context."""
    ctx = st.context_length
    if prompt_len >= ctx:
        raise ContextLengthExceededError(
            f"the prompt has {prompt_len} tokens, but the context length is {ctx} (prompt + output)",
            param=prompt_param,
        )
    room = ctx - prompt_len
    if requested is None:
        return room if default is None else min(default, room)
    if requested < 1:
        raise bad_request(f"{param} must be >= 1, got {requested}", param=param)
    if requested > room:
        raise ContextLengthExceededError(
            f"{param}={requested} plus the prompt's {prompt_len} tokens exceeds the context length of {ctx}; "
            f"at most {room} tokens can be generated",
            param=param,
        )
    return requested


def sampling_params(
    body: _SamplingFields, max_tokens: int, logprobs: bool, top_logprobs: int
) -> SamplingParams:
    if body.logit_bias:
        raise bad_request("logit_bias is not supported", param="logit_bias")
    if not 1 <= body.n <= MAX_N:
        raise bad_request(f"n must be in [1, {MAX_N}], got {body.n}", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    p = SamplingParams(
        max_new_tokens=max_tokens,
        min_new_tokens=body.min_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=-1 if body.top_k is None else body.top_k,
        min_p=0.0 if body.min_p is None else body.min_p,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        seed=body.seed,
        stop=stop,
        stop_token_ids=list(body.stop_token_ids or []),
        ignore_eos=body.ignore_eos,
        skip_special_tokens=body.skip_special_tokens,
        n=body.n,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    p.validate()
    return p


def _finish_reason(out: RequestOutput) -> str | None:
    return out.finish_reason.type if out.finish_reason else None


def _aborted_error(out: RequestOutput) -> ApiError:
    why = out.finish_reason.message if out.finish_reason and out.finish_reason.message else "aborted"
    return ApiError(503, f"the request was aborted by the server: {why}", type="server_error", code="aborted")


@dataclass
class _UsageTally:
    """Token counts of a call: the prompt counted once per prompt, completions summed over every choice."""

    prompt: dict[int, int] = field(default_factory=dict)
    cached: dict[int, int] = field(default_factory=dict)
    completion: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, i: int, out: RequestOutput) -> None:
        self.prompt[i] = out.prompt_tokens
        self.cached[i] = out.cached_tokens
        self.completion[(i, out.index)] = out.completion_tokens

    def usage(self) -> Usage:
        p, c = sum(self.prompt.values()), sum(self.completion.values())
        return Usage(
            prompt_tokens=p,
            completion_tokens=c,
            total_tokens=p + c,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(self.cached.values())),
        )


async def _collect(group: RequestGroup) -> tuple[dict[tuple[int, int], RequestOutput], _UsageTally]:
    """Run a non-streaming call to the end; a sample aborted by the server turns the call into a 503."""
    finals: dict[tuple[int, int], RequestOutput] = {}
    tally = _UsageTally()
    async with group:
        async for i, out in group.outputs():
            tally.add(i, out)
            if out.finished:
                if out.finish_reason is not None and out.finish_reason.type == "abort":
                    raise _aborted_error(out)
                finals[(i, out.index)] = out
    return finals, tally


# ---------------------------------------------------------------------------------------------------------
# Chat completions
# ---------------------------------------------------------------------------------------------------------


def _chat_logprobs(st: ServerState, lps: list[TokenLogprob] | None) -> ChatChoiceLogprobs | None:
    if lps is None:
        return None
    content = []
    for lp in lps:
        tok = st.token_text(lp.token_id)
        top = [
            TopLogprob(token=(t := st.token_text(tid)), logprob=v, bytes=list(t.encode()))
            for tid, v in lp.top
        ]
        content.append(
            ChatTokenLogprob(token=tok, logprob=lp.logprob, bytes=list(tok.encode()), top_logprobs=top)
        )
    return ChatChoiceLogprobs(content=content)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    body = await read_json(request, ChatCompletionRequest)
    st.check_model(body.model)
    messages = chat_messages(body.messages)
    size = sum(len(m["content"]) for m in messages)
    ids = await off_loop(st.tokenizer.encode_chat, messages, body.add_generation_prompt, size=size)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs=true", param="top_logprobs")
    top = body.top_logprobs or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top}", param="top_logprobs")
    asked, param = (
        (body.max_completion_tokens, "max_completion_tokens")
        if body.max_completion_tokens is not None
        else (body.max_tokens, "max_tokens")
    )
    max_tokens = resolve_max_tokens(st, asked, len(ids), param, "messages")
    params = sampling_params(body, max_tokens, body.logprobs, top)
    rid = body.rid or new_rid("chatcmpl")
    group = RequestGroup(st.engine, [GenerateRequest(ids, params, rid=rid)], st.metrics)
    if body.stream:
        return await _stream_chat(request, st, body, group, rid)
    finals, tally = await _collect(group)
    choices = [
        ChatChoice(
            index=idx,
            message=ChatResponseMessage(content=out.text),
            finish_reason=_finish_reason(out),
            logprobs=_chat_logprobs(st, out.logprobs) if body.logprobs else None,
        )
        for (_, idx), out in sorted(finals.items())
    ]
    return json_response(
        ChatCompletionResponse(
            id=rid, created=int(time.time()), model=st.model_name, choices=choices, usage=tally.usage()
        )
    )


async def _stream_chat(
    request: web.Request, st: ServerState, body: ChatCompletionRequest, group: RequestGroup, rid: str
) -> web.StreamResponse:
    opts = body.stream_options
    created = int(time.time())

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=rid, created=created, model=st.model_name, choices=choices, usage=usage)

    tally = _UsageTally()
    sse = SSEWriter(request)
    async with group:
        await sse.start()
        # The first chunk of each choice carries the role, as OpenAI's does.
        for idx in range(body.n):
            await sse.send(
                chunk([ChatChunkChoice(index=idx, delta=DeltaMessage(role="assistant", content=""))])
            )
        async for _, out in group.outputs():
            tally.add(0, out)
            if out.finished and _finish_reason(out) == "abort":
                await sse.send(error_body(_aborted_error(out)))
                break
            lp = _chat_logprobs(st, out.delta_logprobs) if body.logprobs else None
            if not (out.delta_text or out.finished or (lp and lp.content)):
                continue  # tokens held back as a possible stop-string prefix
            choice = ChatChunkChoice(
                index=out.index,
                delta=DeltaMessage(content=out.delta_text or None),
                finish_reason=_finish_reason(out) if out.finished else None,
                logprobs=lp,
            )
            usage = tally.usage() if opts and opts.continuous_usage_stats else None
            await sse.send(chunk([choice], usage))
        if opts and opts.include_usage:
            await sse.send(chunk([], tally.usage()))
    return await sse.done()


# ---------------------------------------------------------------------------------------------------------
# Completions
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Prompt:
    ids: list[int]
    _text: str | None = None
    _tokenizer: Any = None

    @property
    def text(self) -> str:
        """The prompt as text, echoed back with echo=true (token-id prompts are decoded only then)."""
        if self._text is None:
            self._text = self._tokenizer.decode(self.ids, skip_special_tokens=False)
        return self._text


async def _completion_prompts(st: ServerState, prompt: str | list[Any]) -> list[_Prompt]:
    """`prompt` as text, token ids, a list of texts or a list of token-id lists."""
    if isinstance(prompt, str):
        return [await _text_prompt(st, prompt)]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        return [await _text_prompt(st, p) for p in prompt]
    if isinstance(prompt[0], int) and not isinstance(prompt[0], bool):  # _ids_prompt checks every element
        return [_ids_prompt(st, prompt, "prompt")]
    if all(isinstance(p, list) for p in prompt):
        return [_ids_prompt(st, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    raise bad_request(
        "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists",
        param="prompt",
    )


async def _text_prompt(st: ServerState, text: str) -> _Prompt:
    if not text:
        raise bad_request("prompt must not be empty", param="prompt")
    return _Prompt(await off_loop(st.tokenizer.encode, text, size=len(text)), _text=text)


def _ids_prompt(st: ServerState, ids: list[Any], param: str) -> _Prompt:
    if not ids:
        raise bad_request(f"{param} must not be an empty token list", param="prompt")
    st.check_token_ids(ids, "prompt")
    return _Prompt(ids, _tokenizer=st.tokenizer)


@dataclass
class _CompletionLogprobBuilder:
    """OpenAI legacy logprobs for one choice; text_offset counts from the start of the returned text."""

    st: ServerState
    offset: int = 0

    def build(self, lps: list[TokenLogprob]) -> CompletionLogprobs:
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for lp in lps:
            tok = self.st.token_text(lp.token_id)
            out.tokens.append(tok)
            out.token_logprobs.append(lp.logprob)
            out.top_logprobs.append({self.st.token_text(t): v for t, v in lp.top})
            out.text_offset.append(self.offset)
            self.offset += len(tok)
        return out


async def completions(request: web.Request) -> web.StreamResponse:
    st = state_of(request)
    body = await read_json(request, CompletionRequest)
    st.check_model(body.model)
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request("best_of other than n is not supported", param="best_of")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_TOP_LOGPROBS:
        raise bad_request(
            f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {body.logprobs}", param="logprobs"
        )
    if body.echo and body.logprobs is not None:
        raise bad_request(
            "echo with logprobs is not supported (prompt logprobs are not computed)", param="echo"
        )
    prompts = await _completion_prompts(st, body.prompt)
    if len(prompts) * body.n > MAX_CHOICES:
        raise bad_request(f"len(prompt) * n must be <= {MAX_CHOICES}, got {len(prompts) * body.n}", param="n")
    reqs = []
    for i, p in enumerate(prompts):
        max_tokens = resolve_max_tokens(
            st, body.max_tokens, len(p.ids), "max_tokens", "prompt", default=_COMPLETIONS_DEFAULT_MAX_TOKENS
        )
        params = sampling_params(body, max_tokens, body.logprobs is not None, body.logprobs or 0)
        reqs.append(GenerateRequest(p.ids, params, rid=f"{body.rid}-{i}" if body.rid else None))
    call_id = new_rid("cmpl")
    group = RequestGroup(st.engine, reqs, st.metrics)
    if body.stream:
        return await _stream_completions(request, st, body, prompts, group, call_id)
    finals, tally = await _collect(group)
    choices = []
    for (i, idx), out in sorted(finals.items()):
        prefix = prompts[i].text if body.echo else ""
        lp = None
        if out.logprobs is not None:
            lp = _CompletionLogprobBuilder(st, len(prefix)).build(out.logprobs)
        choices.append(
            CompletionChoice(
                index=i * body.n + idx, text=prefix + out.text, finish_reason=_finish_reason(out), logprobs=lp
            )
        )
    return json_response(
        CompletionResponse(
            id=call_id, created=int(time.time()), model=st.model_name, choices=choices, usage=tally.usage()
        )
    )


async def _stream_completions(
    request: web.Request,
    st: ServerState,
    body: CompletionRequest,
    prompts: list[_Prompt],
    group: RequestGroup,
    call_id: str,
) -> web.StreamResponse:
    opts = body.stream_options
    created = int(time.time())

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> CompletionChunk:
        return CompletionChunk(id=call_id, created=created, model=st.model_name, choices=choices, usage=usage)

    tally = _UsageTally()
    builders: dict[int, _CompletionLogprobBuilder] = {}
    sse = SSEWriter(request)
    async with group:
        await sse.start()
        if body.echo:
            for i, p in enumerate(prompts):
                for idx in range(body.n):
                    await sse.send(chunk([CompletionChoice(index=i * body.n + idx, text=p.text)]))
        async for i, out in group.outputs():
            tally.add(i, out)
            if out.finished and _finish_reason(out) == "abort":
                await sse.send(error_body(_aborted_error(out)))
                break
            index = i * body.n + out.index
            lp = None
            if out.delta_logprobs is not None:
                start = len(prompts[i].text) if body.echo else 0
                lp = builders.setdefault(index, _CompletionLogprobBuilder(st, start)).build(
                    out.delta_logprobs
                )
            if not (out.delta_text or out.finished or (lp and lp.tokens)):
                continue
            choice = CompletionChoice(
                index=index,
                text=out.delta_text,
                finish_reason=_finish_reason(out) if out.finished else None,
                logprobs=lp,
            )
            usage = tally.usage() if opts and opts.continuous_usage_stats else None
            await sse.send(chunk([choice], usage))
        if opts and opts.include_usage:
            await sse.send(chunk([], tally.usage()))
    return await sse.done()


# ---------------------------------------------------------------------------------------------------------
# Models, tokenize, detokenize
# ---------------------------------------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    st = state_of(request)
    card = ModelCard(id=st.model_name, created=st.created, max_model_len=st.context_length)
    return json_response(ModelList(data=[card]))


async def tokenize(request: web.Request) -> web.Response:
    st = state_of(request)
    body = await read_json(request, TokenizeRequest)
    st.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of prompt or messages", param="prompt")
    if body.messages is not None:
        msgs = chat_messages(body.messages)
        ids = await off_loop(
            st.tokenizer.encode_chat,
            msgs,
            body.add_generation_prompt,
            size=sum(len(m["content"]) for m in msgs),
        )
    else:
        text = body.prompt or ""
        ids = await off_loop(st.tokenizer.encode, text, body.add_special_tokens, size=len(text))
    return json_response(TokenizeResponse(tokens=list(ids), count=len(ids), max_model_len=st.context_length))


async def detokenize(request: web.Request) -> web.Response:
    st = state_of(request)
    body = await read_json(request, DetokenizeRequest)
    st.check_model(body.model)
    ids = st.check_token_ids(body.tokens, "tokens")
    return json_response(DetokenizeResponse(prompt=st.tokenizer.decode(ids, skip_special_tokens=False)))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/tokenize", tokenize)
    app.router.add_post("/v1/detokenize", detokenize)
