"""Per-minute history for the monitor page's charts, read from the counters already kept.

The recorder keeps counters per minute for 24 hours (here, or in the shared store), so a
chart needs no new state: each request reads the minutes it shows and reduces each to a
few numbers.  Nothing is stored between requests, and the window is capped at
:data:`MAX_SERIES_MINUTES`, so a request reads at most that many minutes (plus the 59 before
them that the rolling 1302s-per-hour needs).

Calls in flight are not counted by the guards (a permit is not an event); the mean number
in flight over a minute follows from Little's law: the call time that ended in it, over 60 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .. import _config
from ..backends._base import Counters
from . import _histogram
from ._recorder import CounterSource, Recorder
from ._views import fixed_limits, learned_limits, thresholds

__all__ = ["MAX_SERIES_MINUTES", "read_series"]

#: The longest window the page charts (6 hours): each minute is one read of the store.
MAX_SERIES_MINUTES: Final = 360
_HOUR: Final = 60
_COUNTS: Final = ("calls", "successes", "fallbacks", "failures", "cache_hits", "cache_misses")


def _quantile(fields: Mapping[str, int], q: float) -> float | None:
    counts = {int(name[5:]): value for name, value in fields.items() if name.startswith("wait.")}
    value = _histogram.quantile(counts, q)
    return None if value is None else round(value, 6)


def _minute(fields: Mapping[str, int], seconds: float) -> dict[str, Any]:
    calls, successes = fields.get("calls", 0), fields.get("successes", 0)
    row: dict[str, Any] = {name: fields.get(name, 0) for name in _COUNTS}
    row["errors_1302"] = fields.get("err.rate_limit.1302", 0)
    row["success_rate"] = None if calls == 0 else round(successes / calls, 6)
    row["wait_p50"] = _quantile(fields, 0.50)
    row["wait_p99"] = _quantile(fields, 0.99)
    row["in_flight"] = round(fields.get("lat_us", 0) / 1e6 / seconds, 3)
    return row


def _limit(key: str, learned: Mapping[str, Any], fixed: Mapping[str, int], configured: object) -> dict[str, Any] | None:
    """The limit the in-flight chart draws: the learned one, else the decorator's own
    ``concurrency=N``, else the default a decorator without one uses."""
    state = learned.get(key)
    if state is not None:
        return {"value": state.limit, "kind": "learned", "cuts": state.cuts}
    if key in fixed:
        return {"value": fixed[key], "kind": "fixed"}
    if isinstance(configured, int) and not isinstance(configured, bool):
        return {"value": configured, "kind": "GLM_API_MAX_CONCURRENCY"}
    return None


def read_series(recorder: Recorder, minutes: int, source: CounterSource | None = None) -> dict[str, Any]:
    """Each key's numbers for each of the last ``minutes`` minutes (oldest first), as columns."""
    recorder.sync()
    chosen = recorder.source() if source is None else source
    now = recorder.clock()
    last = int(now // 60)
    first = last - minutes + 1
    error = None
    per_minute: dict[int, Counters] = {}
    try:
        for minute in range(first - _HOUR + 1, last + 1):
            per_minute[minute] = chosen.window(minute, minute)
        name = chosen.name
    except Exception as failure:  # the shared store is away: this process's own, as the views do
        error, name = type(failure).__name__, recorder.local.name
        per_minute = {m: recorder.local.window(m, m) for m in range(first - _HOUR + 1, last + 1)}
    keys = sorted({key for counters in per_minute.values() for key in counters})
    learned = learned_limits(keys)
    keys = sorted({*keys, *learned})
    configured = (_config._settings or _config.get_settings()).max_concurrency
    fixed = fixed_limits()
    series: dict[str, Any] = {}
    for key in keys:
        columns: dict[str, list[Any]] = {}
        hour_1302 = [counters.get(key, {}).get("err.rate_limit.1302", 0) for counters in per_minute.values()]
        for index, minute in enumerate(range(first, last + 1)):
            elapsed = min(60.0, max(1.0, now - minute * 60)) if minute == last else 60.0
            row = _minute(per_minute[minute].get(key, {}), elapsed)
            row["errors_1302_last_hour"] = sum(hour_1302[index : index + _HOUR])
            for field, value in row.items():
                columns.setdefault(field, []).append(value)
        series[key] = {"limit": _limit(key, learned, fixed, configured), "minutes": columns}
    result: dict[str, Any] = {
        "source": name,
        "window_minutes": minutes,
        "first_minute": first * 60,
        "now": round(now, 3),
        "thresholds": thresholds(),
        "keys": series,
    }
    if error is not None:
        result["shared_error"] = error
    return result
