"""Alerts: a key crossed a threshold over the last hour, or came back under it.

Checked every 10 s from the stats thread, against the same numbers ``rate_limit_stats(60)``
returns (so, with Redis, the whole fleet's).  Each condition reports once when it starts and
once when it ends, never in between: the state of every condition is kept, in this process
or, with Redis, in one hash that every process updates with ``HSETNX``/``HDEL``, so exactly one
process (the one whose write changed the state) reports a crossing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from . import _stats

__all__ = ["Alert", "on_alert"]

logger = logging.getLogger("glm_guard")

WINDOW_MINUTES: Final = 60
_STATE_TTL_SECONDS: Final = 2 * 3600

AlertKind = Literal["errors_1302", "success_rate"]


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold crossing (``firing=True``) or the recovery from one (``firing=False``)."""

    alert: AlertKind
    key: str
    firing: bool
    value: float
    """1302s per hour, or the success rate, at the time of the check."""
    threshold: float
    window_minutes: int
    at: float


AlertCallback = Callable[[Alert], object]
_callbacks: tuple[AlertCallback, ...] = ()
_lock = threading.Lock()


def on_alert(callback: AlertCallback) -> Callable[[], None]:
    """Call ``callback(alert)`` on every crossing and recovery; returns a function that unregisters it.

    A warning is logged on the ``glm_guard`` logger either way.  Thresholds:
    ``GLM_GUARD_ALERT_1302_PER_HOUR`` (more 1302s than this in the last hour, default 1) and
    ``GLM_GUARD_ALERT_MIN_SUCCESS_RATE`` (a lower success rate over the last hour, default 0.995,
    once a key has had at least 10 calls in it).
    """
    global _callbacks
    if not callable(callback):
        raise TypeError(f"on_alert() needs a callable, got {type(callback).__name__}")
    with _lock:
        _callbacks = (*_callbacks, callback)

    def unregister() -> None:
        global _callbacks
        with _lock:
            remaining = list(_callbacks)
            if callback in remaining:
                remaining.remove(callback)
            _callbacks = tuple(remaining)

    return unregister


class _LocalState:
    def __init__(self) -> None:
        self._firing: set[str] = set()

    def firing(self) -> set[str]:
        return set(self._firing)

    def start(self, name: str) -> bool:
        if name in self._firing:
            return False
        self._firing.add(name)
        return True

    def end(self, name: str) -> bool:
        if name not in self._firing:
            return False
        self._firing.discard(name)
        return True


class _RedisState:
    def __init__(self, source: _stats.RedisSource) -> None:
        self._client = source.backend.sync_client()
        self._name = f"{source.prefix}alerts"

    def firing(self) -> set[str]:
        self._client.expire(self._name, _STATE_TTL_SECONDS)
        return {name.decode() if isinstance(name, bytes) else str(name) for name in self._client.hkeys(self._name)}

    def start(self, name: str) -> bool:
        return bool(self._client.hsetnx(self._name, name, "1"))

    def end(self, name: str) -> bool:
        return bool(self._client.hdel(self._name, name))


class AlertMonitor:
    """Compares a recorder's last hour with the thresholds and reports each change once."""

    def __init__(self, recorder: _stats.Recorder) -> None:
        self.recorder = recorder
        self._local = _LocalState()
        self._lock = threading.Lock()

    def check(self) -> list[Alert]:
        """Evaluate now; returns (and reports) the crossings and recoveries found."""
        with self._lock:
            name, per_key, error = _stats.read_window(self.recorder, WINDOW_MINUTES)
            blocks = {key: _stats.block(fields) for key, fields in per_key.items()}
            limits = _stats.thresholds()
            found = {(b["alert"], b["key"]): b for b in _stats.breaches(blocks, WINDOW_MINUTES, limits)}
            sink = self.recorder.sink() if name == "redis" and error is None else None
            state: Any = self._local if sink is None else _RedisState(sink)
            changes = []
            now = self.recorder.clock()
            for state_name in sorted(state.firing() | {f"{kind}|{key}" for kind, key in found}):
                name_of_alert, _, key = state_name.partition("|")
                kind = cast(AlertKind, name_of_alert)
                breach = found.get((kind, key))
                if breach is not None and state.start(state_name):
                    changes.append(Alert(kind, key, True, breach["value"], breach["threshold"], WINDOW_MINUTES, now))
                elif breach is None and state.end(state_name):
                    value = _current(blocks.get(key), kind)
                    threshold = limits["errors_1302_per_hour" if kind == "errors_1302" else "min_success_rate"]
                    changes.append(Alert(kind, key, False, value, threshold, WINDOW_MINUTES, now))
        for alert in changes:
            _report(alert)
        return changes


def _current(data: dict[str, Any] | None, kind: str) -> float:
    if data is None:
        return 0.0 if kind == "errors_1302" else 1.0
    if kind == "errors_1302":
        return float(data["errors_1302"] * 60 / WINDOW_MINUTES)
    rate = data["success_rate"]
    return 1.0 if rate is None else float(rate)


def _report(alert: Alert) -> None:
    what = "1302 errors per hour" if alert.alert == "errors_1302" else "success rate"
    if alert.firing:
        logger.warning(
            "glm_guard alert: %s on %s is %.4g (threshold %.4g) over the last %d minutes",
            what,
            alert.key,
            alert.value,
            alert.threshold,
            alert.window_minutes,
            extra={"glm_guard_alert": alert.alert, "glm_guard_key": alert.key, "glm_guard_firing": True},
        )
    else:
        logger.warning(
            "glm_guard alert resolved: %s on %s is back to %.4g (threshold %.4g)",
            what,
            alert.key,
            alert.value,
            alert.threshold,
            extra={"glm_guard_alert": alert.alert, "glm_guard_key": alert.key, "glm_guard_firing": False},
        )
    for callback in _callbacks:
        try:
            callback(alert)
        except Exception:
            logger.warning("glm_guard: alert callback %r raised", callback, exc_info=True)


MONITOR = AlertMonitor(_stats.RECORDER)
_stats.RECORDER.alert_check = MONITOR.check
