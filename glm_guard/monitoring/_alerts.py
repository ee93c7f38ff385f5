"""Alerts: a key crossed a threshold over the last hour, or came back under it.

Checked every 10 s from the stats thread, against the same numbers ``rate_limit_stats(60)``
returns (so, with a shared store, the whole fleet's).  Each condition reports once when it
starts and once when it ends, never in between: the state of every condition is kept, in
this process or in the shared store, where exactly one process (the one whose write changed
the state) reports a crossing.  A report is an :class:`Alert` event on the same channel as
every other event, and a warning on the ``glm_guard`` logger.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final, cast

from ._events import Alert, AlertKind, GuardEvent, emit, subscribe
from ._recorder import RECORDER, Recorder
from ._views import block, breaches, read_window, thresholds

__all__ = ["Alert", "AlertMonitor", "on_alert"]

logger = logging.getLogger("glm_guard")

WINDOW_MINUTES: Final = 60


def on_alert(callback: Callable[[Alert], object]) -> Callable[[], None]:
    """Call ``callback(alert)`` on every crossing and recovery; returns a function that unregisters it.

    A warning is logged on the ``glm_guard`` logger either way.  Thresholds:
    ``GLM_GUARD_ALERT_1302_PER_HOUR`` (more 1302s than this in the last hour, default 1) and
    ``GLM_GUARD_ALERT_MIN_SUCCESS_RATE`` (a lower success rate over the last hour, default 0.995,
    once a key has had at least 10 calls in it).  The same alerts reach ``subscribe()``.
    """
    if not callable(callback):
        raise TypeError(f"on_alert() needs a callable, got {type(callback).__name__}")

    def only_alerts(event: GuardEvent) -> None:
        if isinstance(event, Alert):
            callback(event)

    return subscribe(only_alerts)


class _ProcessState:
    """Which alerts are firing, when this process keeps its own stats."""

    def __init__(self) -> None:
        self._firing: set[str] = set()

    def firing_alerts(self) -> set[str]:
        return set(self._firing)

    def start_alert(self, name: str) -> bool:
        if name in self._firing:
            return False
        self._firing.add(name)
        return True

    def end_alert(self, name: str) -> bool:
        if name not in self._firing:
            return False
        self._firing.discard(name)
        return True


class AlertMonitor:
    """Compares a recorder's last hour with the thresholds and reports each change once."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._local = _ProcessState()
        self._lock = threading.Lock()

    def check(self) -> list[Alert]:
        """Evaluate now; returns (and reports) the crossings and recoveries found."""
        with self._lock:
            _, per_key, error = read_window(self.recorder, WINDOW_MINUTES)
            blocks = {key: block(fields) for key, fields in per_key.items()}
            limits = thresholds()
            found = {(b["alert"], b["key"]): b for b in breaches(blocks, WINDOW_MINUTES, limits)}
            shared = self.recorder.sink() if error is None else None
            state: Any = self._local if shared is None else shared
            changes = []
            now = self.recorder.clock()
            for state_name in sorted(state.firing_alerts() | {f"{kind}|{key}" for kind, key in found}):
                name_of_alert, _, key = state_name.partition("|")
                kind = cast(AlertKind, name_of_alert)
                breach = found.get((kind, key))
                if breach is not None and state.start_alert(state_name):
                    changes.append(Alert(kind, key, True, breach["value"], breach["threshold"], WINDOW_MINUTES, now))
                elif breach is None and state.end_alert(state_name):
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
    extra = {"glm_guard_alert": alert.alert, "glm_guard_key": alert.key, "glm_guard_firing": alert.firing}
    if alert.firing:
        logger.warning(
            "glm_guard alert: %s on %s is %.4g (threshold %.4g) over the last %d minutes",
            what,
            alert.key,
            alert.value,
            alert.threshold,
            alert.window_minutes,
            extra=extra,
        )
    else:
        logger.warning(
            "glm_guard alert resolved: %s on %s is back to %.4g (threshold %.4g)",
            what,
            alert.key,
            alert.value,
            alert.threshold,
            extra=extra,
        )
    emit(alert)


MONITOR = AlertMonitor(RECORDER)
RECORDER.alert_check = MONITOR.check
