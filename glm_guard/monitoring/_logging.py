"""A subscriber that logs every event through the standard ``logging`` module.

Each record carries the event's fields as ``extra`` attributes named ``glm_guard_<field>``
(plus ``glm_guard_event``, the kind), so a JSON formatter turns them into structured fields.
Events hold keys, durations and codes only: no prompt text or argument ever reaches a log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._events import (
    Alert,
    AttemptEvent,
    CacheEvent,
    CallEvent,
    GuardEvent,
    LeaseLost,
    LimitChanged,
    RetryEvent,
    WaitEvent,
    subscribe,
)

__all__ = ["LoggingSubscriber"]


def _summary(event: GuardEvent) -> str:
    if isinstance(event, CallEvent):
        return f"{event.outcome} in {event.seconds:.3f}s" + (f" ({event.error})" if event.error else "")
    if isinstance(event, AttemptEvent):
        if event.error_kind is None:
            tokens = f", {event.total_tokens} tokens" if event.total_tokens is not None else ""
            return f"answered in {event.seconds:.3f}s{tokens}"
        return f"{event.error_kind} {event.code or ''} after {event.seconds:.3f}s".replace("  ", " ")
    if isinstance(event, WaitEvent):
        return f"{'gave up waiting' if event.timed_out else 'admitted'} after {event.seconds:.3f}s"
    if isinstance(event, RetryEvent):
        if event.exhausted:
            return f"gave up after attempt {event.attempt} (code {event.code})"
        return f"attempt {event.attempt} failed (code {event.code}); retrying in {event.delay:.2f}s"
    if isinstance(event, CacheEvent):
        return "hit" if event.hit else "miss"
    if isinstance(event, Alert):
        return f"{event.alert} {'firing' if event.firing else 'resolved'} at {event.value:.4g}"
    if isinstance(event, LeaseLost):
        return f"{event.leases} lease(s) lost while their calls were running"
    if isinstance(event, LimitChanged):
        return f"learned concurrency limit now {event.limit} (epoch {event.epoch})"
    return f"served a fallback after {event.error}" + (f" (code {event.code})" if event.code else "")


class LoggingSubscriber:
    """Log each event on ``logger`` (default ``glm_guard.events``) at ``level`` (default DEBUG).

    ``unsubscribe = LoggingSubscriber().subscribe()``.
    """

    def __init__(self, logger: logging.Logger | str = "glm_guard.events", level: int = logging.DEBUG) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def subscribe(self) -> Callable[[], None]:
        return subscribe(self)

    def __call__(self, event: GuardEvent) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        kind = type(event).__name__.removesuffix("Event").lower()  # "call", "attempt", ..., "alert"
        extra = {f"glm_guard_{name}": value for name, value in event._asdict().items()}
        extra["glm_guard_event"] = kind
        self.logger.log(self.level, "glm_guard %s %s: %s", kind, event.key, _summary(event), extra=extra)
