"""The built-in stats recorder: counters per key and per minute, in this process or in Redis.

Guarded calls append small tuples to ``HUB.buffer`` (see ``_probe``); this module folds them
into per-minute counters, from a daemon thread every second and before every read.  A
counter set is a flat ``{field: int}`` dict: durations are integer microseconds plus
histogram bucket counts (``lat.42``), so sets from any number of processes merge by adding.

With a Redis sink (the backend ``GLM_GUARD_BACKEND`` names, or ``configure_stats(backend=)``)
each second's increments go to Redis in one MULTI/EXEC pipeline of ``HINCRBY``s::

    {prefix}stats:m:{minute}   HASH  "{key}|{field}" -> count, one hash per UTC minute
                                     (minute = unix time // 60), expires 24 h + 10 min after it ends
    {prefix}stats:total        HASH  the same fields summed since first use (expires 30 days idle)

and every reader (``stats()``, the monitoring app, ``glm-guard stats``) sums those hashes, so
the numbers cover every process.  A process that dies loses only what it recorded since its
last flush: at most about one second.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import _config, _histogram
from ._errors import ConfigurationError
from ._events import HUB, set_recording

if TYPE_CHECKING:
    from typing import Protocol

    from .backends._base import Backend

    class Source(Protocol):
        """Somewhere counters can be read from: this process, or Redis."""

        name: str

        def totals(self) -> PerKey: ...

        def window(self, first_minute: int, last_minute: int) -> PerKey: ...


__all__ = ["configure_stats", "rate_limit_stats", "stats"]

logger = logging.getLogger("glm_guard")

#: Minutes of per-minute counters kept (locally and in Redis); the largest ``window_minutes``.
RETENTION_MINUTES: Final = 24 * 60
FLUSH_SECONDS: Final = 1.0
ALERT_CHECK_SECONDS: Final = 10.0
#: A success-rate alert needs at least this many calls in the hour, so one early failure is no alert.
ALERT_MIN_CALLS: Final = 10
_SLACK_SECONDS: Final = 600
_TOTAL_TTL_SECONDS: Final = 30 * 24 * 3600

# Tuple kinds appended to HUB.buffer by _probe: (kind, stats key, perf_counter end, ...).  Plain
# values only, so the garbage collector stops tracking the tuples.
CALL, ATTEMPT, WAIT, RETRY, CACHE, HIT_CALL, CALL_ATTEMPT = range(7)
SUCCESS, FALLBACK, ERROR = range(3)  # slots 1, 2, 3 of _SLOTS

Fields = dict[str, int]
PerKey = dict[str, Fields]


def _add(into: Fields, source: Mapping[str, int]) -> None:
    for name, value in source.items():
        into[name] = into.get(name, 0) + value


def _merge(into: PerKey, source: Mapping[str, Mapping[str, int]]) -> None:
    for key, fields in source.items():
        target = into.get(key)
        if target is None:
            into[key] = dict(fields)
        else:
            _add(target, fields)


# Fixed counter slots while folding (list increments are cheaper than dict updates).
_SLOTS: Final = (
    "calls",
    "successes",
    "fallbacks",
    "failures",
    "lat_us",
    "attempts",
    "att_us",
    "waits",
    "wait_us",
    "wait_timeouts",
    "retries",
    "retries_exhausted",
    "cache_hits",
    "cache_misses",
    "tokens_prompt",
    "tokens_completion",
    "tokens_total",
)
_N_SLOTS: Final = len(_SLOTS)
_MICROS: Final = frozenset({"lat_us", "att_us", "wait_us"})
_HISTOGRAMS: Final = ("lat.", "att.", "wait.")


class _Tally:
    """One key's counters for one minute while a batch is folded.

    Durations are only appended here; counting them into histogram buckets happens once per
    batch, in C (``map`` of ``bisect_left`` into a ``Counter``), which costs a fraction of
    doing it event by event in Python.
    """

    __slots__ = ("counts", "durations", "errors")

    def __init__(self) -> None:
        self.counts: list[float] = [0] * _N_SLOTS  # durations summed in seconds, stored as µs
        self.errors: dict[str, int] = {}
        self.durations: tuple[list[float], list[float], list[float]] = ([], [], [])  # calls, attempts, waits

    def fields(self) -> Fields:
        counts = self.counts
        for (count_slot, sum_slot), durations in zip(_DURATION_SLOTS, self.durations, strict=True):
            counts[count_slot] += len(durations)
            counts[sum_slot] += sum(durations)
        result = {
            name: round(value * 1e6) if name in _MICROS else int(value)
            for name, value in zip(_SLOTS, counts, strict=True)
            if value
        }
        result.update(self.errors)
        for prefix, durations in zip(_HISTOGRAMS, self.durations, strict=True):
            if durations:
                for index, value in Counter(map(_bucket, durations)).items():
                    result[f"{prefix}{index}"] = value
        return result


_DURATION_SLOTS: Final = ((0, 4), (5, 6), (7, 8))  # (count, sum) slots of calls, attempts, waits
_bucket = functools.partial(bisect_left, _histogram.BOUNDS)


def fold(events: Iterable[tuple[Any, ...]], offset: float) -> dict[int, PerKey]:
    """Counters per minute and key from buffered tuples; ``offset`` turns their clock into wall time."""
    # This runs for every event the process records, on the stats thread but under the same
    # GIL as the callers, so it does as little per event as it can: the previous event's
    # tally is reused, and durations are only appended (see _Tally).
    minutes: dict[float, dict[str, _Tally]] = {}
    low = high = 0.0  # the current minute, on the events' own clock
    per_key: dict[str, _Tally] = {}
    last_key: object = None
    tally = _Tally()
    for event in events:
        kind, key, ended = event[0], event[1], event[2]
        if not low <= ended < high:
            minute = (ended + offset) // 60
            low, high = minute * 60 - offset, minute * 60 + 60 - offset
            per_key = minutes.setdefault(minute, {})
            last_key = None
        if key is not last_key:
            found = per_key.get(key)
            if found is None:
                found = per_key[key] = _Tally()
            tally, last_key = found, key
        if kind == CALL:
            tally.durations[0].append(event[3])
            tally.counts[1 + event[4]] += 1
        elif kind == ATTEMPT:
            tally.durations[1].append(event[3])
            if event[4] is not None:
                e = tally.errors
                e[event[4]] = e.get(event[4], 0) + 1
            usage = event[5]
            if usage is not None:
                c = tally.counts
                c[14] += usage[0]
                c[15] += usage[1]
                c[16] += usage[2]
        elif kind == CALL_ATTEMPT:  # a one-guard stack: its call and its one plain attempt
            durations = tally.durations
            durations[0].append(event[3])
            durations[1].append(event[5])
            tally.counts[1 + event[4]] += 1
        elif kind == HIT_CALL:  # answered from the cache by the outermost guard: a success and a hit
            tally.durations[0].append(event[3])
            c = tally.counts
            c[1] += 1
            c[12] += 1
        elif kind == CACHE:
            tally.counts[12 if event[3] else 13] += 1
        elif kind == WAIT:
            if event[4]:
                tally.counts[9] += 1
            else:
                tally.durations[2].append(event[3])
        elif kind == RETRY:
            tally.counts[11 if event[3] else 10] += 1
    return {int(minute): {key: tally.fields() for key, tally in tallies.items()} for minute, tallies in minutes.items()}


# -- where counters live -----------------------------------------------------------------------


class LocalStore:
    """This process's counters: one set per minute for the retention, and the running totals."""

    name = "process"

    def __init__(self) -> None:
        self.minutes: dict[int, PerKey] = {}
        self.lifetime: PerKey = {}
        self._lock = threading.Lock()  # the stats thread adds while any thread reads

    def add(self, batch: Mapping[int, PerKey], now_minute: int) -> None:
        with self._lock:
            for minute, per_key in batch.items():
                _merge(self.minutes.setdefault(minute, {}), per_key)
                _merge(self.lifetime, per_key)
            oldest = now_minute - RETENTION_MINUTES
            for minute in [m for m in self.minutes if m < oldest]:
                del self.minutes[minute]

    def totals(self) -> PerKey:
        result: PerKey = {}
        with self._lock:
            _merge(result, self.lifetime)
        return result

    def window(self, first_minute: int, last_minute: int) -> PerKey:
        result: PerKey = {}
        with self._lock:
            for minute, per_key in self.minutes.items():
                if first_minute <= minute <= last_minute:
                    _merge(result, per_key)
        return result


def _parse(raw: Mapping[Any, Any], into: PerKey) -> None:
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        key, _, counter = name.rpartition("|")
        if key:
            fields = into.setdefault(key, {})
            fields[counter] = fields.get(counter, 0) + int(value)


class RedisSource:
    """Counters shared by every process through one Redis (a ``RedisBackend``'s connection pool)."""

    name = "redis"

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.prefix = f"{backend.prefix}stats:"

    def write(self, batch: Mapping[int, PerKey]) -> None:
        client = self.backend.sync_client()
        pipe = client.pipeline(transaction=True)  # all of a flush or none: a retry never double counts
        totals: PerKey = {}
        for minute, per_key in batch.items():
            name = f"{self.prefix}m:{minute}"
            for key, fields in per_key.items():
                for field, value in fields.items():
                    if value:
                        pipe.hincrby(name, f"{key}|{field}", value)
            pipe.expireat(name, (minute + 1) * 60 + RETENTION_MINUTES * 60 + _SLACK_SECONDS)
            _merge(totals, per_key)
        total_name = f"{self.prefix}total"
        for key, fields in totals.items():
            for field, value in fields.items():
                if value:
                    pipe.hincrby(total_name, f"{key}|{field}", value)
        pipe.expire(total_name, _TOTAL_TTL_SECONDS)
        pipe.execute()

    def totals(self) -> PerKey:
        result: PerKey = {}
        _parse(self.backend.sync_client().hgetall(f"{self.prefix}total"), result)
        return result

    def window(self, first_minute: int, last_minute: int) -> PerKey:
        pipe = self.backend.sync_client().pipeline(transaction=False)
        for minute in range(first_minute, last_minute + 1):
            pipe.hgetall(f"{self.prefix}m:{minute}")
        result: PerKey = {}
        for raw in pipe.execute():
            _parse(raw, result)
        return result

    def reachable(self) -> bool:
        try:
            return bool(self.backend.sync_client().ping())
        except Exception:
            return False


def _is_redis(backend: object) -> bool:
    return getattr(backend, "name", None) == "redis" and callable(getattr(backend, "sync_client", None))


def _settings_signature(settings: _config.Settings) -> tuple[str, str | None, str]:
    return (settings.backend, settings.redis_url, settings.key_prefix)


# -- the recorder -------------------------------------------------------------------------------


class Recorder:
    """Folds buffered events into counters and ships them to the sink, once a second.

    ``clock`` is the wall clock that decides minute buckets (tests pass a fake one).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.local = LocalStore()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[int, PerKey] = {}
        self._default_sink: tuple[tuple[str, str | None, str], RedisSource] | None = None
        self._explicit_sink: RedisSource | None = None
        self._explicitly_local = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_failing = False
        self.alert_check: Callable[[], object] | None = None

    # -- the sink --------------------------------------------------------------------------------

    def attach_default(self, backend: object) -> None:
        """A decorator resolved ``GLM_GUARD_BACKEND`` to ``backend``: share stats there if it is Redis."""
        settings = _config._settings
        if settings is None or not _is_redis(backend):
            return
        current = self._default_sink
        if current is None or current[1].backend is not backend:
            self._default_sink = (_settings_signature(settings), RedisSource(backend))

    def set_sink(self, backend: object | None, *, local: bool = False) -> None:
        self._explicit_sink = None if backend is None else RedisSource(backend)
        self._explicitly_local = local

    def sink(self) -> RedisSource | None:
        """Where this process's counters are shared now, if anywhere."""
        if self._explicit_sink is not None:
            return self._explicit_sink
        if self._explicitly_local or self._default_sink is None:
            return None
        signature, source = self._default_sink
        current = _config._settings
        # Settings reloaded with another backend: decorators applied from now on go elsewhere.
        if current is None or _settings_signature(current) != signature:
            return None
        return source

    # -- folding and flushing ----------------------------------------------------------------------

    def drain(self) -> None:
        """Fold everything buffered so far into the counters (and into what the sink still needs)."""
        buffer = HUB.buffer
        count = len(buffer)
        if not count:
            return
        events = []
        popleft = buffer.popleft
        for _ in range(count):
            events.append(popleft())
        self.ingest(events, self.clock() - time.perf_counter())

    def ingest(self, events: Iterable[tuple[Any, ...]], offset: float) -> None:
        """Fold ``events`` (tuples as ``_probe`` builds them) whose clock plus ``offset`` is wall time."""
        batch = fold(events, offset)
        sink = self.sink()
        now_minute = int(self.clock() // 60)
        with self._lock:
            self.local.add(batch, now_minute)
            if sink is not None:
                for minute, per_key in batch.items():
                    _merge(self._pending.setdefault(minute, {}), per_key)

    def flush(self) -> None:
        """Send pending counters to the sink; on failure keep them for the next try."""
        sink = self.sink()
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            if sink is None:
                return
            try:
                sink.write(pending)
            except Exception as error:
                oldest = int(self.clock() // 60) - RETENTION_MINUTES
                with self._lock:
                    for minute, per_key in pending.items():
                        if minute >= oldest:
                            _merge(self._pending.setdefault(minute, {}), per_key)
                if not self._flush_failing:
                    self._flush_failing = True
                    logger.warning(
                        "glm_guard: could not write stats to Redis (%s); keeping them for the next try",
                        type(error).__name__,
                    )
            else:
                if self._flush_failing:
                    self._flush_failing = False
                    logger.warning("glm_guard: writing stats to Redis again")

    def sync(self) -> None:
        """Drain and flush now, so a read sees everything this process recorded."""
        self.drain()
        self.flush()

    def source(self) -> Source:
        sink = self.sink()
        return self.local if sink is None else sink

    # -- the background thread -------------------------------------------------------------------

    def start(self) -> None:
        """Start the once-a-second thread (idempotent; a forked child starts its own)."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="glm-guard-stats", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, *, join: bool = False) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        next_check = time.monotonic() + ALERT_CHECK_SECONDS
        while not self._stop.is_set():
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.sync()
            except Exception:  # never let the thread die: the next second tries again
                logger.debug("glm_guard: stats flush failed", exc_info=True)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + ALERT_CHECK_SECONDS
                check = self.alert_check
                if check is not None:
                    try:
                        check()
                    except Exception:
                        logger.debug("glm_guard: alert check failed", exc_info=True)

    def reset(self) -> None:
        """Forget every counter of this process (tests; a forked child)."""
        HUB.buffer.clear()
        with self._lock:
            self.local = LocalStore()
            self._pending = {}


RECORDER = Recorder()
_configured = False


def ensure_started() -> None:
    """At the first decoration: take ``GLM_GUARD_STATS`` into account and start the thread."""
    global _configured
    if not _configured:
        _configured = True
        settings = _config._settings or _config.get_settings()
        if not settings.stats_enabled:
            set_recording(False)
        atexit.register(_flush_at_exit)
    if HUB.recording:
        RECORDER.start()


def _flush_at_exit() -> None:
    try:
        RECORDER.stop()
        RECORDER.sync()
    except Exception:
        logger.debug("glm_guard: final stats flush failed", exc_info=True)


def _after_fork_in_child() -> None:
    running = RECORDER._thread is not None
    RECORDER._thread = None
    RECORDER._lock = threading.Lock()  # a lock (or an event's) held by a parent thread stays held here
    RECORDER._flush_lock = threading.Lock()
    RECORDER._wake = threading.Event()
    RECORDER._stop = threading.Event()
    RECORDER.reset()  # the parent reports what it recorded; the child starts from zero
    if running and HUB.recording:
        RECORDER.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure_stats(*, enabled: bool | None = None, backend: str | Backend | None = None) -> None:
    """Turn recording on or off, or choose where this process shares its counters.

    ``enabled=False`` stops recording (as ``GLM_GUARD_STATS=0`` does); calls then cost only a
    flag check.  ``backend`` is ``"local"`` (keep counters in this process even when
    ``GLM_GUARD_BACKEND`` is Redis), ``"redis"``, a Redis URL, or a ``RedisBackend``: every
    process naming the same one reads and writes the same counters.
    """
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise ConfigurationError("enabled", f"must be True or False, got {enabled!r}")
        set_recording(enabled)
        global _configured
        _configured = True  # an explicit choice wins over GLM_GUARD_STATS
        if enabled:
            RECORDER.start()
    if backend is not None:
        if isinstance(backend, str) and backend.strip().lower() == "local":
            RECORDER.set_sink(None, local=True)
            return
        from .backends import get_backend

        store = get_backend(backend)
        if not _is_redis(store):
            raise ConfigurationError("backend", "must be 'local' or a Redis backend to share stats")
        RECORDER.sync()
        RECORDER.set_sink(store)


# -- reading --------------------------------------------------------------------------------------


def _iso(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _durations(fields: Mapping[str, int], prefix: str, count: int, total_us: int) -> dict[str, Any]:
    counts = {int(name[len(prefix) :]): value for name, value in fields.items() if name.startswith(prefix)}
    return {
        "count": count,
        "mean": _seconds(total_us / 1e6 / count) if count else None,
        "p50": _seconds(_histogram.quantile(counts, 0.50)),
        "p95": _seconds(_histogram.quantile(counts, 0.95)),
        "p99": _seconds(_histogram.quantile(counts, 0.99)),
    }


def _ratio(part: int, whole: int) -> float | None:
    return None if whole <= 0 else round(part / whole, 6)


def block(fields: Mapping[str, int]) -> dict[str, Any]:
    """The JSON view of one counter set (a key's, or the total)."""
    get = fields.get
    calls = get("calls", 0)
    errors: dict[str, Any] = {"rate_limit": {}, "permanent": {}, "guard_timeout": 0, "other": 0, "total": 0}
    for name, value in fields.items():
        if not name.startswith("err."):
            continue
        kind, _, code = name[4:].partition(".")
        errors["total"] += value
        if kind in ("rate_limit", "permanent"):
            errors[kind][code] = errors[kind].get(code, 0) + value
        elif kind in ("guard_timeout", "other"):
            errors[kind] += value
    waits = _durations(fields, "wait.", get("waits", 0), get("wait_us", 0))
    waits["timeouts"] = get("wait_timeouts", 0)
    waits["total_seconds"] = _seconds(get("wait_us", 0) / 1e6)
    hits, misses = get("cache_hits", 0), get("cache_misses", 0)
    return {
        "calls": calls,
        "successes": get("successes", 0),
        "fallbacks": get("fallbacks", 0),
        "failures": get("failures", 0),
        "success_rate": _ratio(get("successes", 0), calls),
        "attempts": get("attempts", 0),
        "errors": errors,
        "errors_1302": errors["rate_limit"].get("1302", 0),
        "retries": get("retries", 0),
        "retries_exhausted": get("retries_exhausted", 0),
        "waits": waits,
        "latency": _durations(fields, "lat.", calls, get("lat_us", 0)),
        "attempt_latency": _durations(fields, "att.", get("attempts", 0), get("att_us", 0)),
        "cache": {"hits": hits, "misses": misses, "hit_rate": _ratio(hits, hits + misses)},
        "tokens": {
            "prompt": get("tokens_prompt", 0),
            "completion": get("tokens_completion", 0),
            "total": get("tokens_total", 0),
        },
    }


def _total(per_key: Mapping[str, Mapping[str, int]]) -> Fields:
    total: Fields = {}
    for fields in per_key.values():
        _add(total, fields)
    return total


def read_totals(recorder: Recorder, source: Source | None = None) -> tuple[str, PerKey, str | None]:
    """``(source name, counters per key, error)`` since first use; falls back to this process."""
    recorder.sync()
    chosen = recorder.source() if source is None else source
    try:
        return chosen.name, chosen.totals(), None
    except Exception as error:
        return recorder.local.name, recorder.local.totals(), type(error).__name__


def read_window(recorder: Recorder, minutes: int, source: Source | None = None) -> tuple[str, PerKey, str | None]:
    recorder.sync()
    chosen = recorder.source() if source is None else source
    last = int(recorder.clock() // 60)
    first = last - minutes + 1
    try:
        return chosen.name, chosen.window(first, last), None
    except Exception as error:
        return recorder.local.name, recorder.local.window(first, last), type(error).__name__


def check_window(window_minutes: object) -> int:
    if isinstance(window_minutes, bool) or not isinstance(window_minutes, int):
        raise ConfigurationError("window_minutes", f"must be a whole number of minutes, got {window_minutes!r}")
    if not 1 <= window_minutes <= RETENTION_MINUTES:
        raise ConfigurationError(
            "window_minutes", f"must be from 1 to {RETENTION_MINUTES} (the minutes kept), got {window_minutes!r}"
        )
    return window_minutes


def thresholds() -> dict[str, float]:
    settings = _config._settings or _config.get_settings()
    return {
        "errors_1302_per_hour": settings.alert_1302_per_hour,
        "min_success_rate": settings.alert_min_success_rate,
    }


def breaches(
    blocks: Mapping[str, Mapping[str, Any]], window_minutes: int, limits: Mapping[str, float]
) -> list[dict[str, Any]]:
    """The alert conditions ``blocks`` (window blocks per key) are over, scaled to one hour."""
    found = []
    for key, data in sorted(blocks.items()):
        per_hour = data["errors_1302"] * 60 / window_minutes
        if per_hour > limits["errors_1302_per_hour"]:
            found.append(
                {"alert": "errors_1302", "key": key, "value": per_hour, "threshold": limits["errors_1302_per_hour"]}
            )
        rate = data["success_rate"]
        if rate is not None and data["calls"] >= ALERT_MIN_CALLS and rate < limits["min_success_rate"]:
            found.append({"alert": "success_rate", "key": key, "value": rate, "threshold": limits["min_success_rate"]})
    return found


def render_totals(name: str, per_key: PerKey, error: str | None, now: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "source": name,
        "enabled": HUB.recording,
        "generated_at": _iso(now),
        "total": block(_total(per_key)),
        "keys": {key: block(fields) for key, fields in sorted(per_key.items())},
        "backends": _backend_reports(),
    }
    if error is not None:
        result["shared_error"] = error
    return result


def render_window(name: str, per_key: PerKey, error: str | None, now: float, minutes: int) -> dict[str, Any]:
    def windowed(fields: Mapping[str, int]) -> dict[str, Any]:
        data = block(fields)
        data["errors_1302_per_hour"] = round(data["errors_1302"] * 60 / minutes, 6)
        rate_limited = sum(data["errors"]["rate_limit"].values())
        data["rate_limit_errors_per_hour"] = round(rate_limited * 60 / minutes, 6)
        data["calls_per_minute"] = round(data["calls"] / minutes, 6)
        return data

    keys = {key: windowed(fields) for key, fields in sorted(per_key.items())}
    limits = thresholds()
    result: dict[str, Any] = {
        "source": name,
        "enabled": HUB.recording,
        "window_minutes": minutes,
        "from": _iso((int(now // 60) - minutes + 1) * 60),
        "to": _iso(now),
        "generated_at": _iso(now),
        "thresholds": limits,
        "alerts": breaches(keys, minutes, limits),
        "total": windowed(_total(per_key)),
        "keys": keys,
    }
    if error is not None:
        result["shared_error"] = error
    return result


def stats() -> dict[str, Any]:
    """Every guarded call's numbers since this process (or, with Redis, the fleet) started.

    A plain JSON-serialisable dict: ``total`` and ``keys`` (one block per stats key) with calls,
    successes, fallbacks, failures, success rate, provider attempts, errors by class (rate
    limits and permanent errors by code), retries, waits for a permit, latency percentiles,
    cache hits and misses, and tokens.  With a Redis sink the numbers cover every process.
    """
    return render_totals(*read_totals(RECORDER), RECORDER.clock())


def _backend_reports() -> list[dict[str, Any]]:
    """Calls each Redis backend of this process served under its failure policy."""
    module = sys.modules.get("glm_guard.backends._redis")  # never imported just to report
    if module is None:
        return []
    return [backend.degraded_report() for backend in list(module.LIVE_BACKENDS)]


def rate_limit_stats(window_minutes: int = 60) -> dict[str, Any]:
    """The same numbers for the last ``window_minutes`` (1 to 1440), with 1302s per hour and alerts.

    The window is whole minutes: the current one and the ``window_minutes - 1`` before it.
    """
    minutes = check_window(window_minutes)
    return render_window(*read_window(RECORDER, minutes), RECORDER.clock(), minutes)
