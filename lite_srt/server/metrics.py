"""Prometheus metrics of one server: a per-app CollectorRegistry (no global state).

Engine gauges and counters are read from `engine.stats()` at scrape time by a custom collector, so they can
never drift from the engine's own accounting. Latency histograms (TTFT, ITL, E2E) are observed by the server
from stream timings (`RequestTimer`). Touched only from the event-loop thread.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lite_srt.engine.io import EngineStats
from lite_srt.errors import LiteSrtError

PREFIX = "lite_srt"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.0, 10.0)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        # Called at registration, before the engine runs: describe with zeros instead of asking the engine.
        return _engine_families(EngineStats(*[0] * len(dataclasses.fields(EngineStats))))

    def collect(self) -> Iterator[Metric]:
        try:
            s = self._stats()
        except LiteSrtError:  # the engine stopped (shutdown): the server's own metrics still scrape
            return iter(())
        return _engine_families(s)


def _engine_families(s: EngineStats) -> Iterator[Metric]:
    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)

    yield gauge("num_running_requests", "Requests decoding or prefilling now", s.num_running)
    yield gauge("num_queued_requests", "Requests waiting to be scheduled", s.num_waiting)
    yield gauge("kv_total_tokens", "KV pool capacity in tokens", s.kv_total_tokens)
    yield gauge("kv_used_tokens", "KV slots owned by requests or held by the prefix cache", s.kv_used_tokens)
    yield gauge("kv_cached_tokens", "KV slots held by the prefix cache", s.kv_cached_tokens)
    yield gauge(
        "kv_usage_ratio", "kv_used_tokens / kv_total_tokens", s.kv_used_tokens / max(1, s.kv_total_tokens)
    )
    hit = s.cache_hit_tokens_total / s.prompt_tokens_total if s.prompt_tokens_total else 0.0
    yield gauge("cache_hit_rate", "Share of prompt tokens served from the prefix cache", hit)
    yield counter("prompt_tokens", "Prompt tokens processed", s.prompt_tokens_total)
    yield counter("generation_tokens", "Tokens generated", s.generation_tokens_total)
    yield counter("cache_hit_tokens", "Prompt tokens served from the prefix cache", s.cache_hit_tokens_total)
    yield counter("retractions", "Requests retracted when decode ran out of KV", s.num_retractions_total)
    yield counter("finished_requests", "Requests finished by the engine", s.num_finished_total)
    yield counter(
        "cascade_decode_steps", "Decode steps that read shared prefixes once per group", s.cascade_steps_total
    )


@dataclass
class ServerMetrics:
    registry: CollectorRegistry
    ttft: Histogram
    itl: Histogram
    e2e: Histogram
    http_requests: Counter

    @classmethod
    def create(cls, stats: Callable[[], EngineStats]) -> ServerMetrics:
        reg = CollectorRegistry(auto_describe=True)
        reg.register(_EngineCollector(stats))
        return cls(
            registry=reg,
            ttft=Histogram(
                f"{PREFIX}_time_to_first_token_seconds",
                "Time to first token",
                registry=reg,
                buckets=_LATENCY_BUCKETS,
            ),
            itl=Histogram(
                f"{PREFIX}_inter_token_latency_seconds",
                "Time between streamed outputs of a sample",
                registry=reg,
                buckets=_ITL_BUCKETS,
            ),
            e2e=Histogram(
                f"{PREFIX}_e2e_request_latency_seconds",
                "Request submit to last token",
                registry=reg,
                buckets=_LATENCY_BUCKETS,
            ),
            http_requests=Counter(
                f"{PREFIX}_http_requests", "HTTP requests answered", ["route", "status"], registry=reg
            ),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class RequestTimer:
    """Latency bookkeeping of one submitted request (all its samples); observes into ServerMetrics."""

    metrics: ServerMetrics
    start: float = field(default_factory=time.perf_counter)
    _last: dict[int, float] = field(default_factory=dict)

    def on_output(self, index: int, num_new_tokens: int, finished: bool) -> None:
        now = time.perf_counter()
        last = self._last.get(index)
        if num_new_tokens > 0:
            if last is None:
                self.metrics.ttft.observe(now - self.start)
            else:
                self.metrics.itl.observe(now - last)
            self._last[index] = now
        if finished:
            self.metrics.e2e.observe(now - self.start)
