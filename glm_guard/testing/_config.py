"""The simulator's configuration: options, their validation, and key masking for reprs.

Kept free of I/O so the CLI, the pytest plugin and the server can share the same
validation; a bad option fails at construction, not on the first request.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypedDict

from ._catalogue import QUOTA_CODES, check_code
from ._latency import LogNormalLatency
from ._timeline import CapacityTimeline, TimelineSpec

__all__ = [
    "STREAM_FAIL_REASONS",
    "Latency",
    "Responder",
    "SimulatorConfig",
    "SimulatorOptions",
    "StreamFailReason",
    "mask_key",
]

#: ``latency`` may be a fixed delay, ``(mean, jitter)`` drawn uniformly from
#: ``[mean - jitter, mean + jitter]``, a heavy-tailed :class:`LogNormalLatency`, or a
#: callable returning seconds.
Latency = float | tuple[float, float] | LogNormalLatency | Callable[[], float]

#: Builds the assistant's answer from the parsed request body.
Responder = Callable[[Mapping[str, Any]], str]

StreamFailReason = Literal["network_error", "sensitive", "disconnect"]
STREAM_FAIL_REASONS: frozenset[str] = frozenset({"network_error", "sensitive", "disconnect"})


def mask_key(key: str | None) -> str:
    """Render an API key safe for logs and reprs: only the last 4 characters survive."""
    if not key:
        return "<none>"
    if len(key) <= 8:
        return "****"
    return f"****{key[-4:]}"


class SimulatorOptions(TypedDict, total=False):
    """Keyword form of :class:`SimulatorConfig`, for ``run_simulator(**options)``."""

    host: str
    port: int
    concurrency: int | None
    model_concurrency: Mapping[str, int | None]
    rate: tuple[int, float] | None
    retry_after: float | None
    latency: Latency
    stream_chunk_delay: float
    api_keys: Iterable[str] | None
    models: Iterable[str] | None
    faults: Mapping[str, float]
    model_faults: Mapping[str, str]
    status_overrides: Mapping[str, int]
    seed: int | None
    stream_fail_after: int | None
    stream_fail_reason: StreamFailReason
    stream_fail_probability: float
    responder: Responder | None
    idle_timeout: float
    stop_timeout: float
    max_body_bytes: int
    capacity_timeline: TimelineSpec | None
    quota_after: int | None
    quota_code: str
    quota_reset: float
    quota_next_flush_time: bool
    arrears: bool | Iterable[str]
    history_limit: int


def _check_nonneg(value: float, what: str) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


def _check_limit(value: int | None, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{what} must be an int >= 1 or None (unlimited), got {value!r}")


@dataclass(frozen=True, repr=False, eq=False)
class SimulatorConfig:
    """Everything that shapes the simulator's behaviour; immutable, replaced whole on update.

    Attributes:
        host, port: where to listen; port 0 picks a free port.
        concurrency: requests allowed in flight per (api key, model); ``None`` = unlimited.
            GLM's real limit is concurrency, not RPM, so this is the main knob.
        model_concurrency: per-model override of ``concurrency``.
        rate: optional ``(calls, period_s)`` sliding window of admitted starts per
            (key, model); exceeding it also answers 1302.
        retry_after: seconds for a ``Retry-After`` header on 1302 answers. GLM sends
            none, hence ``None`` by default.
        latency: time each admitted request holds its slot before answering (time to
            first chunk for streams); see :data:`Latency`.
        stream_chunk_delay: pause between SSE chunks.
        api_keys: accepted keys; ``None`` accepts any non-empty key.
        models: accepted model names; ``None`` accepts any, otherwise others get 1211.
        faults: business code -> probability, drawn once per request from a seeded RNG
            after auth and before the concurrency check (sum must be <= 1).
        model_faults: model -> code that every request for that model gets.
        status_overrides: code -> HTTP status, e.g. ``{"1305": 503}``.
        seed: RNG seed for ``faults``, jitter and stream failures.
        stream_fail_after: if set, streams end after this many content chunks with
            ``finish_reason = stream_fail_reason`` (``"disconnect"`` drops the socket).
        stream_fail_probability: chance that a stream fails when ``stream_fail_after`` is set.
        responder: builds the answer from the request body; default echoes the last
            user message so callers can check caching.
        idle_timeout: keep-alive connections idle this long are closed.
        stop_timeout: how long ``stop()`` waits for in-flight requests.
        max_body_bytes: larger request bodies get HTTP 413.
        capacity_timeline: makes ``concurrency`` change over time: ``[(concurrency,
            seconds), ...]`` (the last phase holds), a :class:`CapacityTimeline` (which can
            cycle), or ``f(elapsed_s) -> int | None``. Elapsed time counts from ``start()``
            or ``restart_timeline()``. A drop never cuts requests already in flight.
        quota_after: each key's quota window closes after this many admitted calls (0: at
            its first request); it then answers ``quota_code`` until ``quota_reset`` seconds
            have passed, and the count starts again.
        quota_code: "1308" (five-hour), "1310" (weekly/monthly) or "1304" (daily).
        quota_reset: seconds from the window closing to its reset; the message names that
            moment in China Standard Time, as GLM does.
        quota_next_flush_time: also put the reset in the error object as
            ``next_flush_time``, in epoch milliseconds.
        arrears: ``True`` puts every key in arrears (1113), a set of keys only those.
        history_limit: how many request records :meth:`GLMSimulator.history` keeps.
    """

    host: str = "127.0.0.1"
    port: int = 0
    concurrency: int | None = 2
    model_concurrency: Mapping[str, int | None] = field(default_factory=dict)
    rate: tuple[int, float] | None = None
    retry_after: float | None = None
    latency: Latency = 0.02
    stream_chunk_delay: float = 0.002
    api_keys: Iterable[str] | None = None
    models: Iterable[str] | None = None
    faults: Mapping[str, float] = field(default_factory=dict)
    model_faults: Mapping[str, str] = field(default_factory=dict)
    status_overrides: Mapping[str, int] = field(default_factory=dict)
    seed: int | None = None
    stream_fail_after: int | None = None
    stream_fail_reason: StreamFailReason = "network_error"
    stream_fail_probability: float = 1.0
    responder: Responder | None = None
    idle_timeout: float = 300.0
    stop_timeout: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024
    capacity_timeline: TimelineSpec | None = None
    quota_after: int | None = None
    quota_code: str = "1308"
    quota_reset: float = 3600.0
    quota_next_flush_time: bool = False
    arrears: bool | Iterable[str] = False
    history_limit: int = 10_000

    def __post_init__(self) -> None:
        # Normalise containers to immutable copies so a caller mutating its dict later
        # cannot change a running simulator behind the lock's back.
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        _check_limit(self.concurrency, "concurrency")
        mc: dict[str, int | None] = {}
        for model, limit in dict(self.model_concurrency).items():
            _check_limit(limit, f"model_concurrency[{model!r}]")
            mc[str(model)] = limit
        put("model_concurrency", MappingProxyType(mc))

        if self.rate is not None:
            calls, period = self.rate
            if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
                raise ValueError(f"rate calls must be an int >= 1, got {calls!r}")
            if not (period > 0 and math.isfinite(period)):
                raise ValueError(f"rate period must be > 0 seconds, got {period!r}")
            put("rate", (calls, float(period)))
        if self.retry_after is not None:
            _check_nonneg(self.retry_after, "retry_after")

        if isinstance(self.latency, LogNormalLatency):
            pass  # validated when built
        elif isinstance(self.latency, tuple):
            mean, jitter = self.latency
            _check_nonneg(mean, "latency mean")
            _check_nonneg(jitter, "latency jitter")
            put("latency", (float(mean), float(jitter)))
        elif not callable(self.latency):
            _check_nonneg(self.latency, "latency")
            put("latency", float(self.latency))
        _check_nonneg(self.stream_chunk_delay, "stream_chunk_delay")

        if self.api_keys is not None:
            if isinstance(self.api_keys, str):
                raise TypeError("api_keys must be an iterable of keys, not a single string")
            keys = frozenset(self.api_keys)
            if "" in keys:
                raise ValueError("api_keys must not contain an empty key")
            put("api_keys", keys)
        if self.models is not None:
            if isinstance(self.models, str):
                raise TypeError("models must be an iterable of names, not a single string")
            put("models", frozenset(self.models))

        faults: dict[str, float] = {}
        for code, prob in dict(self.faults).items():
            code = check_code(code, "faults")
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"faults[{code!r}] must be a probability in [0, 1], got {prob!r}")
            faults[code] = float(prob)
        if sum(faults.values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to <= 1")
        put("faults", MappingProxyType(faults))
        put(
            "model_faults",
            MappingProxyType({str(m): check_code(c, "model_faults") for m, c in dict(self.model_faults).items()}),
        )
        overrides: dict[str, int] = {}
        for code, status in dict(self.status_overrides).items():
            code = check_code(code, "status_overrides")
            if not 400 <= status <= 599:
                raise ValueError(f"status_overrides[{code!r}] must be a 4xx/5xx status")
            overrides[code] = status
        put("status_overrides", MappingProxyType(overrides))

        if self.stream_fail_after is not None and self.stream_fail_after < 0:
            raise ValueError("stream_fail_after must be >= 0 or None")
        if self.stream_fail_reason not in STREAM_FAIL_REASONS:
            raise ValueError(f"stream_fail_reason must be one of {sorted(STREAM_FAIL_REASONS)}")
        if not 0.0 <= self.stream_fail_probability <= 1.0:
            raise ValueError("stream_fail_probability must be in [0, 1]")
        if not self.idle_timeout > 0:
            raise ValueError("idle_timeout must be > 0")
        _check_nonneg(self.stop_timeout, "stop_timeout")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")

        if self.capacity_timeline is not None and not isinstance(self.capacity_timeline, CapacityTimeline):
            put("capacity_timeline", CapacityTimeline(self.capacity_timeline))
        if self.quota_after is not None and (
            isinstance(self.quota_after, bool) or not isinstance(self.quota_after, int) or self.quota_after < 0
        ):
            raise ValueError(f"quota_after must be an int >= 0 or None, got {self.quota_after!r}")
        code = str(self.quota_code)
        if code not in QUOTA_CODES:
            raise ValueError(f"quota_code must be one of {sorted(QUOTA_CODES)}, got {self.quota_code!r}")
        put("quota_code", code)
        if not (self.quota_reset > 0 and math.isfinite(self.quota_reset)):
            raise ValueError(f"quota_reset must be a finite number of seconds > 0, got {self.quota_reset!r}")
        if isinstance(self.arrears, str):
            raise TypeError("arrears must be a bool or an iterable of keys, not a single string")
        if not isinstance(self.arrears, bool):
            put("arrears", frozenset(self.arrears))
        if self.history_limit < 1:
            raise ValueError("history_limit must be >= 1")

    def replace(self, **changes: Any) -> SimulatorConfig:
        """A validated copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)

    def capacity_at(self, elapsed: float) -> int | None:
        """The per-(key, model) limit ``elapsed`` seconds into the capacity timeline.

        Without a timeline this is ``concurrency``; ``None`` means unlimited. Benchmarks
        use it as the oracle: the true capacity at any moment of a run.
        """
        timeline = self.capacity_timeline
        if isinstance(timeline, CapacityTimeline):
            return timeline.at(elapsed)
        return self.concurrency

    def limit_for(self, model: str, elapsed: float = 0.0) -> int | None:
        """Concurrency limit that applies to ``model`` at ``elapsed`` (overrides win)."""
        if model in self.model_concurrency:
            return self.model_concurrency[model]
        return self.capacity_at(elapsed)

    def in_arrears(self, api_key: str) -> bool:
        """Whether ``api_key`` answers 1113 because of the ``arrears`` option."""
        return self.arrears is True or (isinstance(self.arrears, frozenset) and api_key in self.arrears)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("api_keys", "arrears") and isinstance(value, frozenset):
                shown = "{" + ", ".join(sorted(mask_key(k) for k in value)) + "}"
            elif isinstance(value, MappingProxyType):
                shown = repr(dict(value))
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"SimulatorConfig({', '.join(parts)})"
