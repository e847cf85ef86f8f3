"""The engine's request/response types: what callers (Engine, HTTP server) hand in and get back.

A request with n samples yields RequestOutput objects for each sample index; each carries both the cumulative
state and the delta since that sample's previous output, so streaming and non-streaming callers share one path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lite_srt.sampling_params import SamplingParams


@dataclass
class GenerateRequest:
    input_ids: list[int]
    sampling_params: SamplingParams
    rid: str | None = None  # generated when None; must be unique among live requests


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), best first


@dataclass
class FinishReason:
    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None  # the stop token id or stop string that ended it
    message: str | None = None  # why an abort happened

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "matched": self.matched}
        if self.message:
            d["message"] = self.message
        return d


@dataclass(slots=True)  # one is made per stream per step: slots make that cheaper
class RequestOutput:
    """One update of one sample. `output_ids` / `logprobs` are views of the request's append-only lists cut at
    this update's length, materialized only when read (copying them on every token would cost O(n^2))."""

    rid: str
    index: int  # sample index in [0, n)
    text: str  # text so far; a stop string is trimmed; text that may still become a stop string is held back
    delta_text: str
    delta_ids: list[int]
    delta_logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    all_ids: list[int] = field(
        default_factory=list, repr=False
    )  # the request's list (grows after this update)
    all_logprobs: list[TokenLogprob] | None = field(default=None, repr=False)

    @property
    def output_ids(self) -> list[int]:
        return self.all_ids[: self.completion_tokens]

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        """One per output token when requested."""
        return None if self.all_logprobs is None else self.all_logprobs[: self.completion_tokens]

    def meta_info(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "id": self.rid,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "finish_reason": self.finish_reason.to_dict() if self.finish_reason else None,
        }
        if self.logprobs is not None:
            m["output_token_logprobs"] = [(lp.logprob, lp.token_id) for lp in self.logprobs]
            m["output_top_logprobs"] = [[(v, t) for t, v in lp.top] for lp in self.logprobs]
        return m


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_total_tokens: int
    kv_used_tokens: int  # owned by requests + held by the prefix cache
    kv_cached_tokens: int  # held by the prefix cache
    prompt_tokens_total: int  # prompt tokens of admitted requests (each counted once)
    generation_tokens_total: int
    cache_hit_tokens_total: int  # prompt tokens served from the prefix cache
    num_retractions_total: int
    num_finished_total: int
    cascade_steps_total: int = 0  # decode steps that read shared prefixes once per group
