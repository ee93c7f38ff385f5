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
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from ._account import Account, Refusal
from ._catalogue import check_code, error_status
from ._config import SimulatorConfig, StreamFailReason
from ._latency import LogNormalLatency
from ._records import Outcome, RequestRecord, SimulatorStats

__all__ = ["Admission", "Engine", "Outcome", "Slot", "StreamFault"]


@dataclass(frozen=True, slots=True)
class StreamFault:
    """A planned mid-stream failure: after ``after_chunks`` content chunks, end with ``reason``."""

    after_chunks: int
    reason: StreamFailReason


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of the admission step: ``code`` is ``None`` when the request was admitted.

    ``reset`` (epoch seconds) and ``model_name`` are what a refusal's message must name.
    """

    code: str | None
    latency: float = 0.0
    stream_fault: StreamFault | None = None
    reset: float | None = None
    model_name: str | None = None
    entry: _Entry | None = None


class _Entry:
    """A history entry whose end is filled in when its slot is released."""

    __slots__ = ("code", "end", "key", "model", "outcome", "start", "status", "stream")

    def __init__(
        self, start: float, key: str | None, model: str | None, stream: bool, status: int, code: str | None
    ) -> None:
        self.start, self.key, self.model, self.stream, self.status, self.code = start, key, model, stream, status, code
        refused = code is not None
        self.end: float | None = start if refused else None
        self.outcome: Outcome | Literal["rejected"] | None = "rejected" if refused else None

    def record(self) -> RequestRecord:
        return RequestRecord(
            self.start, self.key, self.model, self.stream, self.status, self.code, self.end, self.outcome
        )


class Slot:
    """An admitted request's concurrency slot, released exactly once.

    Released just *before* the last bytes go out: a client that sends its next request
    the moment it has read a response must never see a spurious 1302 (which would make
    a correct client-side limiter look broken), and counters are already final then.
    """

    __slots__ = ("_engine", "_entry", "_key", "_model", "_released")

    def __init__(self, engine: Engine, key: str, model: str, entry: _Entry | None = None) -> None:
        self._engine, self._key, self._model, self._entry = engine, key, model, entry
        self._released = False

    def release(self, outcome: Outcome) -> None:
        if not self._released:
            self._released = True
            self._engine.finish(self._key, self._model, outcome, self._entry)


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
        self._history: deque[_Entry] = deque(maxlen=config.history_limit)
        self._account = Account()
        self._origin = time.monotonic()
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
            if config.capacity_timeline != self._config.capacity_timeline:
                self._origin = time.monotonic()  # a new timeline starts when it is set
            if config.history_limit != self._config.history_limit:
                self._history = deque(self._history, maxlen=config.history_limit)
            self._config = config

    # -- capacity timeline ---------------------------------------------------------

    def restart_timeline(self) -> float:
        """Make elapsed time on the capacity timeline 0 now; returns the new origin."""
        with self._lock:
            self._origin = time.monotonic()
            return self._origin

    @property
    def origin(self) -> float:
        """``time.monotonic()`` at which the capacity timeline's elapsed time was 0."""
        with self._lock:
            return self._origin

    # -- account-level states --------------------------------------------------------

    def exhaust_quota(self, key: str | None, code: str, reset_in: float) -> float:
        with self._lock:
            return self._account.exhaust(key, str(code), reset_in, time.monotonic(), time.time())

    def clear_quota(self, key: str | None) -> None:
        with self._lock:
            self._account.clear_quota(key)

    def overload(self, model: str, code: str, fraction: float, duration: float | None, switch_to: str) -> None:
        with self._lock:
            self._account.overload(model, str(code), fraction, duration, switch_to, time.monotonic())

    def clear_overload(self, model: str | None) -> None:
        with self._lock:
            self._account.clear_overload(model)

    def overloaded(self) -> tuple[str, ...]:
        with self._lock:
            return self._account.overloaded(time.monotonic())

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
            self._count_reject_locked(_Entry(time.monotonic(), api_key, model, stream, status, code))

    def try_admit(self, api_key: str, model: str, stream: bool) -> Admission:
        """Apply forced codes, account states, faults, then the concurrency and rate limits."""
        now = time.monotonic()
        wall = time.time()
        with self._lock:
            cfg = self._config
            refusal: Refusal | None = None
            code = self._pick_forced_locked(model)
            if code is None:
                refusal = self._account.refusal(cfg, api_key, model, now, wall, self._rng)
                code = refusal.code if refusal is not None else self._pick_fault_locked(cfg, model)
            pair = (api_key, model)
            if code is None:
                limit = cfg.limit_for(model, now - self._origin)
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
                self._count_reject_locked(_Entry(now, api_key, model, stream, status, code))
                if refusal is not None:
                    return Admission(code, reset=refusal.reset, model_name=refusal.model_name)
                return Admission(code)

            current = self._in_flight.get(pair, 0) + 1
            self._in_flight[pair] = current
            self._peak_by[pair] = max(self._peak_by.get(pair, 0), current)
            self._in_flight_total += 1
            self._peak_total = max(self._peak_total, self._in_flight_total)
            self._admitted += 1
            self._account.admitted(cfg, api_key, now, wall)
            entry = _Entry(now, api_key, model, stream, 200, None)
            self._history.append(entry)
            fault = self._pick_stream_fault_locked(cfg) if stream else None
            spec = cfg.latency
            if isinstance(spec, LogNormalLatency) or not callable(spec):
                return Admission(None, self._draw_latency_locked(spec), fault, entry=entry)
        # A user-supplied latency callable runs outside the lock: it may be slow.
        return Admission(None, max(0.0, float(spec())), fault, entry=entry)

    def stream_started(self) -> None:
        with self._lock:
            self._streams_started += 1

    def finish(self, api_key: str, model: str, outcome: Outcome, entry: _Entry | None = None) -> None:
        """Release the slot taken by :meth:`try_admit` and record how it ended."""
        pair = (api_key, model)
        with self._lock:
            if entry is not None:
                entry.end, entry.outcome = time.monotonic(), outcome
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
            elapsed = time.monotonic() - self._origin
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
                capacity=self._config.capacity_at(elapsed),
                timeline_elapsed=elapsed,
            )

    def history(self) -> tuple[RequestRecord, ...]:
        with self._lock:
            return tuple(entry.record() for entry in self._history)

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

    def _count_reject_locked(self, entry: _Entry) -> None:
        assert entry.code is not None
        self._rejected[entry.code] = self._rejected.get(entry.code, 0) + 1
        self._history.append(entry)

    def _pick_forced_locked(self, model: str) -> str | None:
        for entry in self._forced:
            if entry.model is None or entry.model == model:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    self._forced.remove(entry)
                return entry.code
        return None

    def _pick_fault_locked(self, cfg: SimulatorConfig, model: str) -> str | None:
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

    def _draw_latency_locked(self, spec: float | tuple[float, float] | LogNormalLatency) -> float:
        if isinstance(spec, LogNormalLatency):
            value = spec.draw(self._rng)
        elif isinstance(spec, tuple):
            mean, jitter = spec
            value = self._rng.uniform(mean - jitter, mean + jitter) if jitter else mean
        else:
            value = spec
        return max(0.0, value)
