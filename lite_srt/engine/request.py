"""Request state: one `Req` per sample, grouped by `RequestGroup` (a user request with n samples).

Ownership: event-loop thread only (scheduler and the stream the caller iterates). The forward thread never
sees these objects, only the ForwardBatch built from them.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lite_srt.engine.io import FinishReason, RequestOutput, TokenLogprob
from lite_srt.engine.sampler import plain_greedy_from
from lite_srt.sampling_params import SamplingParams
from lite_srt.tokenizer.detokenizer import IncrementalDetokenizer, StopStringMatcher, make_detokenizer
from lite_srt.tokenizer.tokenizer import Tokenizer


class ReqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"  # prefilled, decoding
    FINISHED = "finished"


@dataclass(eq=False)
class SharedPrefix:
    """The prompt KV that the n samples of one request share: held by a prefix-only Req until the last sample
    releases it."""

    holder: Req  # the prefix job (its table row holds the slots; it may hold a prefix-cache lock)
    length: int  # shared positions [0, length), page-aligned
    refs: int


@dataclass(eq=False)
class Req:
    rid: str
    index: int
    input_ids: list[int]
    params: SamplingParams
    seed: int
    group: RequestGroup
    eos_ids: frozenset[int]
    is_prefix_job: bool = False  # prefills a shared prompt for n > 1 samples; never samples
    shared: SharedPrefix | None = None
    output_ids: list[int] = field(default_factory=list)
    state: ReqState = ReqState.WAITING
    # KV: positions [0, cached_len) come from the prefix cache (locked) or the shared prefix;
    # positions [cached_len, kv_len) are this request's own slots. All live in table row `row`.
    row: int | None = None
    cache_handle: Any = None
    cached_len: int = 0
    kv_len: int = 0
    last_slot: int = -1
    prompt_cached_tokens: int = 0  # reported as meta_info.cached_tokens
    num_retractions: int = 0
    # Overlap scheduling: tokens sampled by steps not yet processed, and an epoch that invalidates those
    # steps' results once the request is retracted or finished.
    pending: int = 0
    epoch: int = 0
    finish_reason: FinishReason | None = None
    # output
    detok: IncrementalDetokenizer | None = None
    stop_matcher: StopStringMatcher | None = None
    text: str = ""
    sent_text_len: int = 0
    sent_ids_len: int = 0
    logprobs: list[TokenLogprob] | None = None
    sent_logprobs_len: int = 0
    # Derived once from params (read every step by the scheduler's hot path, so not recomputed per token):
    # tokens that end the request once min_new_tokens is reached, the output length at which it ends by
    # length (the scheduler lowers it to fit the context), and the output length from which its sampler row
    # needs no per-row work (greedy, no penalties, no logprobs, no min-token bans left).
    stop_ids: frozenset[int] = frozenset()
    max_output: int = 0
    plain_sampling_from: int = 0

    def __post_init__(self) -> None:
        p = self.params
        self.stop_ids = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else self.eos_ids)
        self.max_output = p.max_new_tokens
        self.plain_sampling_from = plain_greedy_from(p, self.stop_ids)

    @property
    def fill_ids(self) -> list[int]:
        """All tokens whose K/V must exist before the next token can be sampled."""
        return self.input_ids + self.output_ids if self.output_ids else self.input_ids

    @property
    def fill_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    def remaining_new_tokens(self) -> int:
        return max(self.params.max_new_tokens - len(self.output_ids), 0)


class OutputQueue:
    """The RequestOutputs of one group, for its single consumer (the RequestStream).

    A deque plus one waiter future: the scheduler puts one item per stream per step, so asyncio.Queue's
    bookkeeping (size limits, task counting, a getter list) is cost with no use here.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[RequestOutput] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: RequestOutput) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> RequestOutput:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> RequestOutput:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class RequestGroup:
    """A user request: its n sample Reqs and the queue its caller reads RequestOutputs from."""

    def __init__(self, rid: str, n: int) -> None:
        self.rid = rid
        self.n = n
        self.reqs: list[Req] = []
        self.prefix_job: Req | None = None  # prefills the prompt the n samples share
        self.queue = OutputQueue()
        self.num_finished = 0
        self.aborted = False

    @property
    def finished(self) -> bool:
        return self.num_finished >= self.n


def init_output_state(req: Req, tokenizer: Tokenizer) -> None:
    p = req.params
    req.detok = make_detokenizer(tokenizer, p.skip_special_tokens, p.spaces_between_special_tokens)
    req.stop_matcher = StopStringMatcher(p.stop) if p.stop else None
    req.logprobs = [] if (p.logprobs or p.top_logprobs > 0) else None


def make_output(req: Req) -> RequestOutput:
    """The RequestOutput for what is new since the last one; text that could still grow into a stop string is
    held back until the request finishes. Runs once per stream per step: plain locals, no helper calls."""
    finished = req.state is ReqState.FINISHED
    text = req.text
    text_end = len(text)
    if not finished and req.stop_matcher is not None:
        text_end -= req.stop_matcher.holdback(text)
    sent_text = req.sent_text_len
    text_end = max(text_end, sent_text)
    ids = req.output_ids
    n_ids = len(ids)
    logprobs = req.logprobs
    out = RequestOutput(
        rid=req.rid,
        index=req.index,
        text=text[:text_end],  # the whole string is not copied: a full slice returns the same object
        delta_text=text[sent_text:text_end],
        delta_ids=ids[req.sent_ids_len :],
        delta_logprobs=logprobs[req.sent_logprobs_len :] if logprobs is not None else None,
        finished=finished,
        finish_reason=req.finish_reason,
        prompt_tokens=len(req.input_ids),
        completion_tokens=n_ids,
        cached_tokens=req.prompt_cached_tokens,
        all_ids=ids,
        all_logprobs=logprobs,
    )
    req.sent_text_len = text_end
    req.sent_ids_len = n_ids
    if logprobs is not None:
        req.sent_logprobs_len = len(logprobs)
    return out
