"""One log line per prefill step and one per `--decode-log-interval` decode steps, as SGLang's scheduler prints:
what a server is doing over time (queue, KV usage, decode throughput) without a profiler.

Runs on the event-loop thread, from the scheduler, with plain numbers (no tensors).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger("lite_srt.engine.scheduler")


@dataclass
class StepLog:
    decode_interval: int  # 0: no decode lines
    _decode_steps: int = 0
    _since: float = field(default_factory=time.perf_counter)
    _tokens_at: int = 0

    def prefill(
        self,
        new_seqs: int,
        new_tokens: int,
        cached: int,
        decodes: int,
        usage: float,
        running: int,
        queued: int,
    ) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "prefill: %d new seqs, %d new tokens, %d cached, %d decodes alongside, KV usage %.2f, "
                "running %d, queued %d",
                new_seqs, new_tokens, cached, decodes, usage, running, queued,
            )  # fmt: skip

    def decode_due(self) -> bool:
        """Counts a decode step; True on every decode_interval-th (the caller then gathers numbers for decode)."""
        if not self.decode_interval:
            return False
        self._decode_steps += 1
        return self._decode_steps % self.decode_interval == 0

    def decode(self, generated: int, running: int, usage: float, queued: int) -> None:
        """Logs the output tokens/s since the last decode line (`generated` is the running total of output
        tokens, prefill-sampled ones included)."""
        now = time.perf_counter()
        rate = (generated - self._tokens_at) / max(now - self._since, 1e-9)
        self._since, self._tokens_at = now, generated
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "decode: running %d, KV usage %.2f, %.0f output tok/s, queued %d",
                running,
                usage,
                rate,
                queued,
            )
