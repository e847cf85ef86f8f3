"""Wire types of the HTTP API: msgspec structs for every request and response body.

Request structs forbid unknown fields, so a field lite_srt does not implement is refused with a 400 instead of
being silently ignored. Response structs are shared with `lite_srt.client`, which decodes into them. Pure data:
no engine or event-loop state lives here.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Req(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are a 400, not a silent no-op."""


class _Resp(msgspec.Struct, kw_only=True):
    """Base of response bodies: clients tolerate fields added later."""


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible requests
# ---------------------------------------------------------------------------------------------------------


class StreamOptions(_Req, kw_only=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ContentPart(_Req, kw_only=True):
    type: str
    text: str | None = None
    image_url: dict[str, Any] | None = None


class ChatMessage(_Req, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class _SamplingFields(_Req, kw_only=True):
    """Sampling fields shared by /v1/chat/completions and /v1/completions (OpenAI names + lite_srt extras)."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # lite_srt extras (also accepted by SGLang / vLLM under the same names)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    min_tokens: int = 0
    skip_special_tokens: bool = True
    rid: str | None = None


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True


class CompletionRequest(_SamplingFields, kw_only=True):
    # str | list[str] | list[int] | list[list[int]]: msgspec allows one array type in a union, so the list
    # form is checked by hand (server/openai_api.py).
    prompt: str | list[Any]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class TokenizeRequest(_Req, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Req, kw_only=True):
    model: str | None = None
    tokens: list[int]


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible responses
# ---------------------------------------------------------------------------------------------------------


class PromptTokensDetails(_Resp, kw_only=True):
    cached_tokens: int = 0


class Usage(_Resp, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(_Resp, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(_Resp, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChatChoiceLogprobs(_Resp, kw_only=True):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(_Resp, kw_only=True):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(_Resp, kw_only=True):
    index: int
    message: ChatResponseMessage
    finish_reason: str | None = None
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletionResponse(_Resp, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class DeltaMessage(_Resp, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Resp, kw_only=True):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletionChunk(_Resp, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(_Resp, kw_only=True):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(_Resp, kw_only=True):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(_Resp, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class CompletionChunk(_Resp, kw_only=True):
    """A streamed /v1/completions chunk (OpenAI uses object "text_completion" for these too)."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(_Resp, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "lite_srt"
    max_model_len: int | None = None


class ModelList(_Resp, kw_only=True):
    object: str = "list"
    data: list[ModelCard] = []


class TokenizeResponse(_Resp, kw_only=True):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(_Resp, kw_only=True):
    prompt: str


class ErrorInfo(_Resp, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Resp, kw_only=True):
    error: ErrorInfo


# ---------------------------------------------------------------------------------------------------------
# Native API
# ---------------------------------------------------------------------------------------------------------


class GenerateReqInput(_Req, kw_only=True):
    """POST /generate: one prompt (`text` or `input_ids`) or a batch of them (lists)."""

    text: str | list[str] | None = None
    input_ids: list[Any] | None = None  # list[int] (one prompt) or list[list[int]] (batch)
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    rid: str | list[str] | None = None


class FinishReasonInfo(_Resp, kw_only=True):
    type: str
    matched: int | str | None = None
    message: str | None = None


class MetaInfo(_Resp, kw_only=True):
    """`meta_info` of a /generate result: RequestOutput.meta_info() of lite_srt/engine/io.py."""

    id: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    finish_reason: FinishReasonInfo | None = None
    output_token_logprobs: list[tuple[float, int]] | None = None
    output_top_logprobs: list[list[tuple[float, int]]] | None = None


class GenerateResult(_Resp, kw_only=True):
    """One sample of /generate. Streamed chunks carry the cumulative `text`/`output_ids` so far."""

    text: str
    output_ids: list[int]
    meta_info: MetaInfo
    index: int = 0


class AbortRequest(_Req, kw_only=True):
    rid: str


class ProfileRequest(_Req, kw_only=True):
    output_dir: str | None = None  # default: $LITE_SRT_PROFILE_DIR, else the system temp directory


class SuccessResponse(_Resp, kw_only=True):
    success: bool
    message: str = ""
