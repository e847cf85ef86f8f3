"""Engine: the offline, synchronous Python API (SGLang-style), also usable from async code.

The AsyncEngine runs on a private event loop in a background thread; `generate` blocks on it, and
`async_generate` bridges results to the caller's own loop.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from lite_srt.config import ServerArgs
from lite_srt.engine.async_engine import AsyncEngine
from lite_srt.engine.io import GenerateRequest, RequestOutput
from lite_srt.errors import InvalidRequestError
from lite_srt.sampling_params import SamplingParams

Prompt = str | list[str] | None
InputIds = list[int] | list[list[int]] | None
Params = dict[str, Any] | list[dict[str, Any]] | None


class Engine:
    def __init__(self, model_path: str | None = None, **server_args: Any) -> None:
        self.args = ServerArgs.from_kwargs(model_path=model_path, **server_args)
        self.core = AsyncEngine(self.args)
        self.tokenizer = self.core.tokenizer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lite-srt-engine-loop", daemon=True
        )
        self._thread.start()
        self._call(self.core.start()).result()

    def _call(self, coro: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- request building ------------------------------------------------------------------------------
    def _requests(
        self, prompt: Prompt, input_ids: InputIds, sampling_params: Params, rid: str | list[str] | None = None
    ) -> tuple[list[GenerateRequest], bool]:
        if (prompt is None) == (input_ids is None):
            raise InvalidRequestError("pass exactly one of prompt and input_ids", param="prompt")
        if prompt is not None:
            single = isinstance(prompt, str)
            prompts = [prompt] if single else list(prompt)
            if not all(isinstance(p, str) for p in prompts):
                raise InvalidRequestError("prompt must be a string or a list of strings", param="prompt")
            ids = [self.tokenizer.encode(p) for p in prompts]
        else:
            single = bool(input_ids) and not isinstance(input_ids[0], list)  # type: ignore[index]
            ids = [list(input_ids)] if single else [list(x) for x in input_ids]  # type: ignore[arg-type,union-attr]
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(ids):
                raise InvalidRequestError(
                    f"got {len(sampling_params)} sampling_params for {len(ids)} prompts",
                    param="sampling_params",
                )
            params = [SamplingParams.from_dict(p) for p in sampling_params]
        else:
            params = [SamplingParams.from_dict(sampling_params)] * len(ids)
        rids = [rid] if isinstance(rid, str) else (rid or [uuid.uuid4().hex for _ in ids])
        return [GenerateRequest(i, p, r) for i, p, r in zip(ids, params, rids)], single

    # -- sync API ----------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt = None,
        input_ids: InputIds = None,
        sampling_params: Params = None,
        rid: str | list[str] | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """One dict for a single prompt with n=1, else a list (prompt-major, then sample index)."""
        reqs, single = self._requests(prompt, input_ids, sampling_params, rid)
        results = self._call(self._collect_all(reqs)).result()
        return results[0] if single and len(results) == 1 else results

    async def _collect_all(self, reqs: list[GenerateRequest]) -> list[dict[str, Any]]:
        streams = [self.core.generate(r) for r in reqs]  # validate all before waiting on any
        outs = await asyncio.gather(*(_collect(s) for s in streams))
        return [d for group in outs for d in group]

    # -- async API (any event loop) ---------------------------------------------------------------------
    async def async_generate(
        self,
        prompt: Prompt = None,
        input_ids: InputIds = None,
        sampling_params: Params = None,
        rid: str | list[str] | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        reqs, single = self._requests(prompt, input_ids, sampling_params, rid)
        results = await asyncio.wrap_future(self._call(self._collect_all(reqs)))
        return results[0] if single and len(results) == 1 else results

    async def async_generate_stream(
        self,
        prompt: str | None = None,
        input_ids: list[int] | None = None,
        sampling_params: dict[str, Any] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields {"index", "text", "delta", "output_ids", "finished", "meta_info"} as tokens arrive."""
        reqs, _ = self._requests(prompt, input_ids, sampling_params)
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                stream = self.core.generate(reqs[0])
                async for out in stream:
                    caller.call_soon_threadsafe(queue.put_nowait, out)
                caller.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:  # surface validation errors in the caller's loop
                caller.call_soon_threadsafe(queue.put_nowait, e)

        fut = self._call(pump())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield {
                    "index": item.index,
                    "text": item.text,
                    "delta": item.delta_text,
                    "output_ids": item.output_ids,
                    "finished": item.finished,
                    "meta_info": item.meta_info(),
                }
        finally:
            if not fut.done():
                self._loop.call_soon_threadsafe(self.core.abort, reqs[0].rid)

    # -- misc --------------------------------------------------------------------------------------------
    def abort(self, rid: str) -> bool:
        return self._call(_as_coro(self.core.abort, rid)).result()

    def get_stats(self):
        return self._call(_as_coro(self.core.stats)).result()

    def flush_cache(self) -> bool:
        return self._call(self.core.flush_cache()).result()

    def shutdown(self) -> None:
        if not self._loop.is_running():
            return
        self._call(self.core.shutdown()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


async def _as_coro(fn: Any, *args: Any) -> Any:
    return fn(*args)


async def _collect(stream: Any) -> list[dict[str, Any]]:
    final: dict[int, RequestOutput] = {}
    async for out in stream:
        if out.finished:
            final[out.index] = out
    return [
        {"text": o.text, "output_ids": o.output_ids, "meta_info": o.meta_info(), "index": o.index}
        for o in sorted(final.values(), key=lambda o: o.index)
    ]
