"""The numbers users read: ``stats()``, ``rate_limit_stats()``, and the alert conditions.

Both read the recorder's source (the shared store when this process shares its stats, else
this process) and fall back to this process's own counters, with ``shared_error`` saying
why, when the shared store cannot be read.

Learned concurrency limits (``concurrency="auto"``) are not counters: they are read at each
view from the live backends, which on Redis means from Redis, so they are the fleet's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from .. import _config
from .._errors import ConfigurationError
from ..backends._base import Counters, LearnedState, LearnsLimits, ReportsOutages, SharesStats
from . import _histogram
from ._counters import RETENTION_MINUTES, total
from ._recorder import RECORDER, CounterSource, Recorder

__all__ = ["fixed_limits", "learned_limits", "rate_limit_stats", "stats"]

#: A success-rate alert needs at least this many calls in the hour, so one early failure is no alert.
ALERT_MIN_CALLS: Final = 10


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


def read_totals(recorder: Recorder, source: CounterSource | None = None) -> tuple[str, Counters, str | None]:
    """``(source name, counters per key, error)`` since first use; falls back to this process."""
    recorder.sync()
    chosen = recorder.source() if source is None else source
    try:
        return chosen.name, chosen.totals(), None
    except Exception as error:
        return recorder.local.name, recorder.local.totals(), type(error).__name__


def read_window(
    recorder: Recorder, minutes: int, source: CounterSource | None = None
) -> tuple[str, Counters, str | None]:
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


def learned_limits(keys: Iterable[str] = ()) -> dict[str, LearnedState]:
    """The learned concurrency limit of every key this process learns one for, and of ``keys``
    where a live backend holds one (on Redis: read from Redis, the whole fleet's value).

    A key with a limit in several backends takes a shared backend's (Redis) over this process's.
    """
    from ..backends import live_backends

    wanted = list(keys)
    found: dict[str, LearnedState] = {}
    for backend in sorted(live_backends(), key=lambda backend: not isinstance(backend, SharesStats)):
        if isinstance(backend, LearnsLimits):
            for key, state in backend.learned_limits(wanted).items():
                found.setdefault(key, state)
    return found


def fixed_limits() -> dict[str, int]:
    """The fixed concurrency limit (``concurrency=N``) each key was last admitted under, in this
    process or, on Redis, wherever in the fleet a process last flushed its stats."""
    from ..backends import live_backends

    found: dict[str, int] = {}
    for backend in live_backends():
        if isinstance(backend, LearnsLimits):
            found.update(backend.fixed_limits())
    return found


Limits = tuple[Mapping[str, int], LearnedState | None, int | None]


def _with_limits(per_key: Counters) -> dict[str, Limits]:
    """Each key's counters with its learned limit and its fixed one; a key with a learned limit
    but nothing recorded (its stats key differs, or stats are off) still gets a row, so no
    limit goes unseen."""
    learned = learned_limits(per_key)
    fixed = fixed_limits()
    keys = sorted({*per_key, *learned})
    return {key: (per_key.get(key, {}), learned.get(key), fixed.get(key)) for key in keys}


def _key_blocks(per_key: Counters, view: Callable[[Mapping[str, int]], dict[str, Any]]) -> dict[str, Any]:
    """Each key's ``view`` of its counters, with its limits."""
    blocks = {}
    for key, (fields, learned, fixed) in _with_limits(per_key).items():
        data = view(fields)
        data["learned_limit"] = None if learned is None else learned.limit
        data["limit_cuts"] = None if learned is None else learned.cuts
        data["concurrency_limit"] = fixed if learned is None else learned.limit  # what calls in flight are held to
        blocks[key] = data
    return blocks


def render_totals(name: str, per_key: Counters, error: str | None, now: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "source": name,
        "enabled": RECORDER.recording,
        "generated_at": _iso(now),
        "total": block(total(per_key)),
        "keys": _key_blocks(per_key, block),
        "backends": _backend_reports(),
    }
    if error is not None:
        result["shared_error"] = error
    return result


def render_window(name: str, per_key: Counters, error: str | None, now: float, minutes: int) -> dict[str, Any]:
    def windowed(fields: Mapping[str, int]) -> dict[str, Any]:
        data = block(fields)
        data["errors_1302_per_hour"] = round(data["errors_1302"] * 60 / minutes, 6)
        rate_limited = sum(data["errors"]["rate_limit"].values())
        data["rate_limit_errors_per_hour"] = round(rate_limited * 60 / minutes, 6)
        data["calls_per_minute"] = round(data["calls"] / minutes, 6)
        return data

    keys = _key_blocks(per_key, windowed)
    limits = thresholds()
    result: dict[str, Any] = {
        "source": name,
        "enabled": RECORDER.recording,
        "window_minutes": minutes,
        "from": _iso((int(now // 60) - minutes + 1) * 60),
        "to": _iso(now),
        "generated_at": _iso(now),
        "thresholds": limits,
        "alerts": breaches(keys, minutes, limits),
        "total": windowed(total(per_key)),
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
    cache hits and misses, tokens, and the key's learned concurrency limit (``learned_limit``,
    ``limit_cuts``; ``None`` without ``concurrency="auto"``).  With a Redis sink the numbers
    cover every process.
    """
    return render_totals(*read_totals(RECORDER), RECORDER.clock())


def _backend_reports() -> list[dict[str, object]]:
    """Calls each backend of this process served under its outage policy."""
    from ..backends import live_backends

    return [backend.outage_report() for backend in live_backends() if isinstance(backend, ReportsOutages)]


def rate_limit_stats(window_minutes: int = 60) -> dict[str, Any]:
    """The same numbers for the last ``window_minutes`` (1 to 1440), with 1302s per hour and alerts.

    The window is whole minutes: the current one and the ``window_minutes - 1`` before it.
    """
    minutes = check_window(window_minutes)
    return render_window(*read_window(RECORDER, minutes), RECORDER.clock(), minutes)
