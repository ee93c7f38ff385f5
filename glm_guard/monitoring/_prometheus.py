"""Prometheus: the stats as exposition text, and a subscriber that feeds your own registry.

:func:`render` turns recorded counters (this process's, or the fleet's from Redis) into the
text format through ``prometheus_client``'s own families and writer, so ``GET /metrics`` is
exactly what a scraper expects.  :class:`PrometheusSubscriber` is the other way round: it
listens to events and updates ``Counter``/``Histogram`` objects on a registry you already
expose.  Scrape one or the other, not both (they use the same metric names).

Learned concurrency limits are values, not counts: :func:`render` shows each key's as
``glm_guard_learned_concurrency_limit`` (a gauge) with ``glm_guard_learned_limit_cuts_total``,
read from the backend that holds them; the subscriber sets the gauge from the changes it sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

# An optional dependency (the ``prometheus`` extra): typed when installed, Any when not.
from prometheus_client import (  # type: ignore[import-not-found, unused-ignore]
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (  # type: ignore[import-not-found, unused-ignore]
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..backends._base import LearnedState
from . import _histogram, _views
from ._events import AttemptEvent, CacheEvent, CallEvent, GuardEvent, LimitChanged, RetryEvent, WaitEvent, subscribe

__all__ = ["CONTENT_TYPE", "PrometheusSubscriber", "render"]

CONTENT_TYPE: Final[str] = CONTENT_TYPE_LATEST
_EXPORTED: Final = tuple(_histogram.BOUNDS[i] for i in _histogram.PROMETHEUS_BOUNDS)


def _le(bound: float) -> str:
    return f"{bound:.6g}"


def _histogram_family(
    name: str, doc: str, per_key: Mapping[str, Mapping[str, int]], prefix: str, sum_field: str
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["key"])
    for key, fields in sorted(per_key.items()):
        counts = {int(f[len(prefix) :]): v for f, v in fields.items() if f.startswith(prefix)}
        total = sum(counts.values())
        if not total:
            continue
        buckets = [(_le(bound), count) for bound, count in _histogram.cumulative(counts, _histogram.PROMETHEUS_BOUNDS)]
        buckets.append(("+Inf", total))
        family.add_metric([key], buckets, fields.get(sum_field, 0) / 1e6)
    return family


class _Collector:
    def __init__(
        self,
        totals: Mapping[str, Mapping[str, int]],
        hour: Mapping[str, Mapping[str, int]],
        learned: Mapping[str, LearnedState],
    ) -> None:
        self._totals = totals
        self._hour = hour
        self._learned = learned

    def collect(self) -> Iterator[Metric]:
        totals = self._totals
        calls = CounterMetricFamily(
            "glm_guard_calls", "Guarded calls by what the caller got", labels=["key", "outcome"]
        )
        attempts = CounterMetricFamily("glm_guard_attempts", "Runs of the guarded function", labels=["key"])
        errors = CounterMetricFamily(
            "glm_guard_attempt_errors", "Failed attempts by error class and code", labels=["key", "kind", "code"]
        )
        retries = CounterMetricFamily("glm_guard_retries", "Retries scheduled by retry_on_1302", labels=["key"])
        exhausted = CounterMetricFamily("glm_guard_retries_exhausted", "Calls retry_on_1302 gave up on", labels=["key"])
        waits = CounterMetricFamily("glm_guard_waits", "Calls that waited 1 ms or more for a permit", labels=["key"])
        timeouts = CounterMetricFamily("glm_guard_wait_timeouts", "Permits not granted within max_wait", labels=["key"])
        cache = CounterMetricFamily("glm_guard_cache_requests", "cached_response lookups", labels=["key", "result"])
        tokens = CounterMetricFamily("glm_guard_tokens", "Tokens reported in results' usage", labels=["key", "type"])
        for key, f in sorted(totals.items()):
            for outcome, field in (("success", "successes"), ("fallback", "fallbacks"), ("error", "failures")):
                calls.add_metric([key, outcome], f.get(field, 0))
            attempts.add_metric([key], f.get("attempts", 0))
            for name, value in sorted(f.items()):
                if name.startswith("err."):
                    kind, _, code = name[4:].partition(".")
                    errors.add_metric([key, kind, code], value)
            retries.add_metric([key], f.get("retries", 0))
            exhausted.add_metric([key], f.get("retries_exhausted", 0))
            waits.add_metric([key], f.get("waits", 0))
            timeouts.add_metric([key], f.get("wait_timeouts", 0))
            cache.add_metric([key, "hit"], f.get("cache_hits", 0))
            cache.add_metric([key, "miss"], f.get("cache_misses", 0))
            for kind in ("prompt", "completion", "total"):
                tokens.add_metric([key, kind], f.get(f"tokens_{kind}", 0))
        yield from (calls, attempts, errors, retries, exhausted, waits, timeouts, cache, tokens)
        yield _histogram_family(
            "glm_guard_call_duration_seconds", "Call duration as the caller saw it", totals, "lat.", "lat_us"
        )
        yield _histogram_family(
            "glm_guard_attempt_duration_seconds", "Duration of one run of the function", totals, "att.", "att_us"
        )
        yield _histogram_family(
            "glm_guard_wait_duration_seconds",
            "Time spent waiting for a permit (waits >= 1 ms)",
            totals,
            "wait.",
            "wait_us",
        )
        yield from self._last_hour()
        yield from self._learned_limits()

    def _learned_limits(self) -> Iterator[Metric]:
        limits = GaugeMetricFamily(
            "glm_guard_learned_concurrency_limit",
            'Concurrency limit learned from the provider (concurrency="auto")',
            labels=["key"],
        )
        cuts = CounterMetricFamily(
            "glm_guard_learned_limit_cuts", "Cuts of the learned limit after 1302s (congestion epochs)", labels=["key"]
        )
        for key, state in sorted(self._learned.items()):
            limits.add_metric([key], state.limit)
            cuts.add_metric([key], state.cuts)
        yield from (limits, cuts)

    def _last_hour(self) -> Iterator[Metric]:
        blocks = {key: _views.block(fields) for key, fields in self._hour.items()}
        errors_1302 = GaugeMetricFamily(
            "glm_guard_errors_1302_last_hour", "1302 errors in the last 60 minutes", labels=["key"]
        )
        success = GaugeMetricFamily(
            "glm_guard_success_rate_last_hour",
            "Share of calls answered for real in the last 60 minutes",
            labels=["key"],
        )
        firing = GaugeMetricFamily(
            "glm_guard_alert_firing", "1 while an alert condition holds", labels=["key", "alert"]
        )
        for key, data in sorted(blocks.items()):
            errors_1302.add_metric([key], data["errors_1302"])
            if data["success_rate"] is not None:
                success.add_metric([key], data["success_rate"])
        for breach in _views.breaches(blocks, 60, _views.thresholds()):
            firing.add_metric([breach["key"], breach["alert"]], 1)
        yield from (errors_1302, success, firing)


def render(
    totals: Mapping[str, Mapping[str, int]],
    hour: Mapping[str, Mapping[str, int]],
    learned: Mapping[str, LearnedState] | None = None,
) -> bytes:
    """The exposition text for counters since first use (``totals``), over the last hour, and
    the ``learned`` concurrency limits (default: :func:`~._views.learned_limits` for ``totals``' keys)."""
    if learned is None:
        learned = _views.learned_limits(totals)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(totals, hour, learned))
    return bytes(generate_latest(registry))


class PrometheusSubscriber:
    """Events into ``prometheus_client`` metrics on ``registry`` (default: the global one).

    ``unsubscribe = PrometheusSubscriber().subscribe()``; the metrics count this process only.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        options: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.calls = Counter("glm_guard_calls", "Guarded calls by outcome", ["key", "outcome"], **options)
        self.attempts = Counter("glm_guard_attempts", "Runs of the guarded function", ["key"], **options)
        self.errors = Counter("glm_guard_attempt_errors", "Failed attempts", ["key", "kind", "code"], **options)
        self.retries = Counter("glm_guard_retries", "Retries scheduled", ["key"], **options)
        self.exhausted = Counter("glm_guard_retries_exhausted", "Calls retry gave up on", ["key"], **options)
        self.cache = Counter("glm_guard_cache_requests", "cached_response lookups", ["key", "result"], **options)
        self.tokens = Counter("glm_guard_tokens", "Tokens reported in usage", ["key", "type"], **options)
        self.call_seconds = Histogram(
            "glm_guard_call_duration_seconds", "Call duration", ["key"], buckets=_EXPORTED, **options
        )
        self.attempt_seconds = Histogram(
            "glm_guard_attempt_duration_seconds", "Attempt duration", ["key"], buckets=_EXPORTED, **options
        )
        self.wait_seconds = Histogram(
            "glm_guard_wait_duration_seconds", "Permit wait (every admission)", ["key"], buckets=_EXPORTED, **options
        )
        self.learned_limit = Gauge(
            "glm_guard_learned_concurrency_limit", "Learned concurrency limit, as last changed here", ["key"], **options
        )

    def subscribe(self) -> Callable[[], None]:
        return subscribe(self)

    def __call__(self, event: GuardEvent) -> None:
        if isinstance(event, AttemptEvent):
            self.attempts.labels(event.key).inc()
            self.attempt_seconds.labels(event.key).observe(event.seconds)
            if event.error_kind is not None:
                self.errors.labels(event.key, event.error_kind, event.code or "").inc()
            for kind, value in (
                ("prompt", event.prompt_tokens),
                ("completion", event.completion_tokens),
                ("total", event.total_tokens),
            ):
                if value:
                    self.tokens.labels(event.key, kind).inc(value)
        elif isinstance(event, CallEvent):
            self.calls.labels(event.key, event.outcome).inc()
            self.call_seconds.labels(event.key).observe(event.seconds)
        elif isinstance(event, WaitEvent):
            if not event.timed_out:
                self.wait_seconds.labels(event.key).observe(event.seconds)
        elif isinstance(event, RetryEvent):
            (self.exhausted if event.exhausted else self.retries).labels(event.key).inc()
        elif isinstance(event, CacheEvent):
            self.cache.labels(event.key, "hit" if event.hit else "miss").inc()
        elif isinstance(event, LimitChanged):
            self.learned_limit.labels(event.key).set(event.limit)
