"""Submitting requests to the engine from a handler and consuming their outputs, abort-safe.

`RequestGroup` submits the GenerateRequests of one HTTP call all-or-nothing and yields
`(request_index, RequestOutput)` merged across them. Whatever way the handler leaves (finished, exception, its
task cancelled because the client disconnected), every unfinished request is aborted so its KV is freed at
once. Runs on the event-loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from lite_srt.engine.io import GenerateRequest, RequestOutput
from lite_srt.server.metrics import RequestTimer, ServerMetrics


class EngineLike(Protocol):
    """The part of AsyncEngine the server uses to run requests (lite_srt/engine/async_engine.py)."""

    def generate(self, req: GenerateRequest) -> Any: ...

    def abort(self, rid: str) -> bool: ...


def new_rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class _Submitted:
    rid: str
    stream: Any
    n: int
    timer: RequestTimer
    finished: set[int] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.n


def _submit_all(engine: EngineLike, reqs: list[GenerateRequest], metrics: ServerMetrics) -> list[_Submitted]:
    subs: list[_Submitted] = []
    try:
        for req in reqs:
            if req.rid is None:
                req.rid = new_rid("req")
            stream = engine.generate(req)
            subs.append(_Submitted(req.rid, stream, req.sampling_params.n, RequestTimer(metrics)))
    except BaseException:
        # All or nothing: a batch whose 3rd prompt is bad must not leave the first two running.
        _abort_unfinished(engine, subs)
        raise
    return subs


def _abort_unfinished(engine: EngineLike, subs: list[_Submitted]) -> None:
    for s in subs:
        if not s.done:
            engine.abort(s.rid)


async def _pump(
    i: int, sub: _Submitted, q: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]]
) -> None:
    try:
        async for out in sub.stream:
            await q.put((i, out))
        await q.put((i, None))
    except asyncio.CancelledError:
        raise
    except BaseException as e:  # handed to the consumer, which re-raises it in the handler
        await q.put((i, e))


async def _merged(subs: list[_Submitted]) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    if len(subs) == 1:
        async for out in subs[0].stream:
            yield 0, out
        return
    q: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()
    tasks = [asyncio.ensure_future(_pump(i, s, q)) for i, s in enumerate(subs)]
    try:
        remaining = len(subs)
        while remaining:
            i, item = await q.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


class RequestGroup:
    """Requests submitted together (one HTTP call). Use as `async with RequestGroup(...) as g:`.

    The constructor submits synchronously, so the engine's validation errors (400/503) surface before a
    handler has sent any response header; leaving the `async with` aborts whatever has not finished.
    """

    def __init__(self, engine: EngineLike, reqs: list[GenerateRequest], metrics: ServerMetrics) -> None:
        self._engine = engine
        self._subs = _submit_all(engine, reqs, metrics)
        self._iter: AsyncGenerator[tuple[int, RequestOutput], None] | None = None

    @property
    def rids(self) -> list[str]:
        return [s.rid for s in self._subs]

    def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Yield `(request_index, output)` merged across the group until every sample has finished."""
        self._iter = self._outputs()
        return self._iter

    async def _outputs(self) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        # aclosing: the merge's pump tasks are cancelled as soon as this generator closes, not at GC.
        async with contextlib.aclosing(_merged(self._subs)) as merged:
            async for i, out in merged:
                sub = self._subs[i]
                sub.timer.on_output(out.index, len(out.delta_ids), out.finished)
                if out.finished:
                    sub.finished.add(out.index)
                yield i, out

    async def aclose(self) -> None:
        _abort_unfinished(self._engine, self._subs)
        if self._iter is not None:
            with contextlib.suppress(Exception):
                await self._iter.aclose()
        for s in self._subs:
            aclose = getattr(s.stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def __aenter__(self) -> RequestGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
