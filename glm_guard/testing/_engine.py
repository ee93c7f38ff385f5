"""Admission decisions and counters, with no I/O.

Everything here runs under one ``threading.Lock``: the server thread mutates state while
test threads read snapshots or inject faults, and each critical section is a few dict
operations, so a single lock is both simple and cheap.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ._catalogue import check_code, error_status
from ._config import SimulatorConfig, StreamFailReason, mask_key

__all__ = [
    "Admission",
    "Engine",
    "Outcome",
    "RequestRecord",
    "SimulatorStats",
    "Slot",
    "StreamFault",
]

Outcome = Literal["completed", "stream_failed", "disconnected"]
_HISTORY_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class StreamFault:
    """A planned mid-stream failure: after ``after_chunks`` content chunks, end with ``reason``."""

    after_chunks: int
    reason: StreamFailReason


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of the admission step: ``code`` is ``None`` when the request was admitted."""

    code: str | None
    latency: float = 0.0
    stream_fault: StreamFault | None = None


@dataclass(frozen=True, slots=True, repr=False)
class RequestRecord:
    """One request as the simulator saw it; ``time`` is ``time.monotonic()`` at decision.

    Lets retry tests check how many attempts were made and how far apart.
    """

    time: float
    api_key: str | None
    model: str | None
    stream: bool
    status: int
    code: str | None

    def __repr__(self) -> str:
        return (
            f"RequestRecord(time={self.time:.3f}, api_key={mask_key(self.api_key)!r}, "
            f"model={self.model!r}, stream={self.stream}, status={self.status}, code={self.code!r})"
        )


def _mask_pairs(d: Mapping[tuple[str, str], int]) -> str:
    return "{" + ", ".join(f"({mask_key(k)!r}, {m!r}): {v}" for (k, m), v in d.items()) + "}"


@dataclass(frozen=True, repr=False)
class SimulatorStats:
    """Point-in-time snapshot of the counters (taken under the lock, so self-consistent).

    Attributes:
        total_requests: requests that reached the chat-completions endpoint.
        admitted: requests that got a concurrency slot (passed auth, faults and limits).
        completed: admitted requests answered in full with ``finish_reason`` stop/length.
        rejected: business code -> number of error answers (1302, 1002, injected faults...).
        in_flight / peak_in_flight: admitted requests being served now / the maximum ever
            seen at once since the last reset, over all keys and models.
        in_flight_by / peak_in_flight_by: the same per ``(api_key, model)``.
        streams_started: admitted streaming requests whose SSE response began.
        streams_failed: streams ended on purpose by an injected mid-stream failure.
        disconnected: admitted requests whose client went away (or that ``stop()`` cut).
    """

    total_requests: int = 0
    admitted: int = 0
    completed: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    in_flight_by: Mapping[tuple[str, str], int] = field(default_factory=dict)
    peak_in_flight_by: Mapping[tuple[str, str], int] = field(default_factory=dict)
    streams_started: int = 0
    streams_failed: int = 0
    disconnected: int = 0

    @property
    def rejected_total(self) -> int:
        """All error answers, whatever the code."""
        return sum(self.rejected.values())

    def peak_for(self, api_key: str, model: str) -> int:
        """Peak in-flight for one (key, model) pair; 0 if never seen."""
        return self.peak_in_flight_by.get((api_key, model), 0)

    def in_flight_for(self, api_key: str, model: str) -> int:
        """Current in-flight for one (key, model) pair."""
        return self.in_flight_by.get((api_key, model), 0)

    def __repr__(self) -> str:
        return (
            f"SimulatorStats(total_requests={self.total_requests}, admitted={self.admitted}, "
            f"completed={self.completed}, rejected={dict(self.rejected)!r}, "
            f"in_flight={self.in_flight}, peak_in_flight={self.peak_in_flight}, "
            f"in_flight_by={_mask_pairs(self.in_flight_by)}, "
            f"peak_in_flight_by={_mask_pairs(self.peak_in_flight_by)}, "
            f"streams_started={self.streams_started}, streams_failed={self.streams_failed}, "
            f"disconnected={self.disconnected})"
        )


class Slot:
    """An admitted request's concurrency slot, released exactly once.

    Released just *before* the last bytes go out: a client that sends its next request
    the moment it has read a response must never see a spurious 1302 (which would make
    a correct client-side limiter look broken), and counters are already final then.
    """

    __slots__ = ("_engine", "_key", "_model", "_released")

    def __init__(self, engine: Engine, key: str, model: str) -> None:
        self._engine, self._key, self._model = engine, key, model
        self._released = False

    def release(self, outcome: Outcome) -> None:
        if not self._released:
            self._released = True
            self._engine.finish(self._key, self._model, outcome)


@dataclass(slots=True)
class _Forced:
    code: str
    remaining: int
    model: str | None


@dataclass(slots=True)
class _ForcedStream:
    fault: StreamFault
    remaining: int


class Engine:
    """Holds the live config, fault plan, limits and counters for one simulator."""

    _total: int
    _admitted: int
    _completed: int
    _rejected: dict[str, int]
    _streams_started: int
    _streams_failed: int
    _disconnected: int
    _in_flight_total: int
    _peak_total: int
    _peak_by: dict[tuple[str, str], int]

    def __init__(self, config: SimulatorConfig) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._rng = random.Random(config.seed)
        self._forced: deque[_Forced] = deque()
        self._forced_streams: deque[_ForcedStream] = deque()
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._history: deque[RequestRecord] = deque(maxlen=_HISTORY_LIMIT)
        self._reset_counters_locked()

    # -- configuration -------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        with self._lock:
            return self._config

    def set_config(self, config: SimulatorConfig) -> None:
        with self._lock:
            if config.seed != self._config.seed:
                self._rng = random.Random(config.seed)
            self._config = config

    def force_next(self, code: str, count: int, model: str | None) -> None:
        code = check_code(code, "force_next")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._forced.append(_Forced(code, count, model))

    def fail_next_streams(self, count: int, fault: StreamFault) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._forced_streams.append(_ForcedStream(fault, count))

    def clear_forced(self) -> None:
        with self._lock:
            self._forced.clear()
            self._forced_streams.clear()

    # -- request lifecycle ---------------------------------------------------------

    def received(self) -> None:
        with self._lock:
            self._total += 1

    def reject(
        self,
        code: str,
        status: int,
        api_key: str | None,
        model: str | None,
        stream: bool,
    ) -> None:
        """Count an error answer decided outside the engine (auth, validation)."""
        with self._lock:
            self._count_reject_locked(code, RequestRecord(time.monotonic(), api_key, model, stream, status, code))

    def try_admit(self, api_key: str, model: str, stream: bool) -> Admission:
        """Apply forced codes, random faults, then the concurrency and rate limits."""
        now = time.monotonic()
        with self._lock:
            cfg = self._config
            code = self._pick_fault_locked(cfg, model)
            pair = (api_key, model)
            if code is None:
                limit = cfg.limit_for(model)
                current = self._in_flight.get(pair, 0)
                if limit is not None and current >= limit:
                    code = "1302"
                elif cfg.rate is not None:
                    calls, period = cfg.rate
                    window = self._windows.setdefault(pair, deque())
                    while window and window[0] <= now - period:
                        window.popleft()
                    if len(window) >= calls:
                        code = "1302"
                    else:
                        window.append(now)
            if code is not None:
                status = error_status(code, cfg.status_overrides)
                self._count_reject_locked(code, RequestRecord(now, api_key, model, stream, status, code))
                return Admission(code)

            current = self._in_flight.get(pair, 0) + 1
            self._in_flight[pair] = current
            self._peak_by[pair] = max(self._peak_by.get(pair, 0), current)
            self._in_flight_total += 1
            self._peak_total = max(self._peak_total, self._in_flight_total)
            self._admitted += 1
            self._history.append(RequestRecord(now, api_key, model, stream, 200, None))
            fault = self._pick_stream_fault_locked(cfg) if stream else None
            spec = cfg.latency
            if not callable(spec):
                return Admission(None, self._draw_latency_locked(spec), fault)
        # A user-supplied latency callable runs outside the lock: it may be slow.
        return Admission(None, max(0.0, float(spec())), fault)

    def stream_started(self) -> None:
        with self._lock:
            self._streams_started += 1

    def finish(self, api_key: str, model: str, outcome: Outcome) -> None:
        """Release the slot taken by :meth:`try_admit` and record how it ended."""
        pair = (api_key, model)
        with self._lock:
            left = self._in_flight.get(pair, 0) - 1
            if left > 0:
                self._in_flight[pair] = left
            else:
                self._in_flight.pop(pair, None)
            self._in_flight_total = max(0, self._in_flight_total - 1)
            if outcome == "completed":
                self._completed += 1
            elif outcome == "stream_failed":
                self._streams_failed += 1
            else:
                self._disconnected += 1

    # -- observation ---------------------------------------------------------------

    def stats(self) -> SimulatorStats:
        with self._lock:
            return SimulatorStats(
                total_requests=self._total,
                admitted=self._admitted,
                completed=self._completed,
                rejected=MappingProxyType(dict(self._rejected)),
                in_flight=self._in_flight_total,
                peak_in_flight=self._peak_total,
                in_flight_by=MappingProxyType(dict(self._in_flight)),
                peak_in_flight_by=MappingProxyType(dict(self._peak_by)),
                streams_started=self._streams_started,
                streams_failed=self._streams_failed,
                disconnected=self._disconnected,
            )

    def history(self) -> tuple[RequestRecord, ...]:
        with self._lock:
            return tuple(self._history)

    def reset(self) -> None:
        """Zero counters and history; in-flight requests keep their slots (peaks restart there)."""
        with self._lock:
            self._reset_counters_locked()
            self._history.clear()
            self._windows.clear()

    # -- internals (caller holds the lock) -----------------------------------------

    def _reset_counters_locked(self) -> None:
        self._total = 0
        self._admitted = 0
        self._completed = 0
        self._rejected = {}
        self._streams_started = 0
        self._streams_failed = 0
        self._disconnected = 0
        self._in_flight_total = sum(self._in_flight.values())
        self._peak_total = self._in_flight_total
        self._peak_by = dict(self._in_flight)

    def _count_reject_locked(self, code: str, record: RequestRecord) -> None:
        self._rejected[code] = self._rejected.get(code, 0) + 1
        self._history.append(record)

    def _pick_fault_locked(self, cfg: SimulatorConfig, model: str) -> str | None:
        for entry in self._forced:
            if entry.model is None or entry.model == model:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    self._forced.remove(entry)
                return entry.code
        if model in cfg.model_faults:
            return cfg.model_faults[model]
        if cfg.faults:
            draw = self._rng.random()
            acc = 0.0
            for code, prob in cfg.faults.items():
                acc += prob
                if draw < acc:
                    return code
        return None

    def _pick_stream_fault_locked(self, cfg: SimulatorConfig) -> StreamFault | None:
        if self._forced_streams:
            entry = self._forced_streams[0]
            entry.remaining -= 1
            if entry.remaining <= 0:
                self._forced_streams.popleft()
            return entry.fault
        if cfg.stream_fail_after is not None and (
            cfg.stream_fail_probability >= 1.0 or self._rng.random() < cfg.stream_fail_probability
        ):
            return StreamFault(cfg.stream_fail_after, cfg.stream_fail_reason)
        return None

    def _draw_latency_locked(self, spec: float | tuple[float, float]) -> float:
        if isinstance(spec, tuple):
            mean, jitter = spec
            value = self._rng.uniform(mean - jitter, mean + jitter) if jitter else mean
        else:
            value = spec
        return max(0.0, value)
