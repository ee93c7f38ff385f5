"""What the guards did, as typed events, and the one channel that carries them.

Every report a guard makes becomes one of the event types below, handed to each subscriber
in turn; the stats recorder is a subscriber like any other.  With nobody subscribed (stats
off, no listener) no event is built: one attribute read (``HUB.active``) decides.

Events are small named tuples: immutable, typed, and cheap enough to build on every call.
They carry the stats key, durations and error codes: never arguments, results or prompt text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, NamedTuple, TypeAlias

logger = logging.getLogger("glm_guard")

ErrorKind: TypeAlias = Literal["rate_limit", "permanent", "guard_timeout", "other"]
AlertKind: TypeAlias = Literal["errors_1302", "success_rate"]


class CallEvent(NamedTuple):
    """A call finished as its caller saw it (the outermost guard of a stack reports it)."""

    key: str
    seconds: float
    outcome: Literal["success", "fallback", "error"]
    error: str | None
    """The exception's class name when ``outcome == "error"``."""
    at: float
    """Wall-clock time (``time.time()``) of the end of the call."""


class AttemptEvent(NamedTuple):
    """One run of the user's function: what the provider answered, how long it took."""

    key: str
    seconds: float
    error_kind: ErrorKind | None
    """``None`` for an answer; else the classifier's verdict on the error."""
    code: str | None
    """The provider's error code (``"1302"``), or the HTTP status when it named none."""
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    at: float


class WaitEvent(NamedTuple):
    """``rate_limited`` admitted a call after ``seconds``, or gave up waiting (``timed_out``)."""

    key: str
    seconds: float
    timed_out: bool
    at: float


class RetryEvent(NamedTuple):
    """``retry_on_1302`` scheduled another attempt, or gave up (``exhausted``)."""

    key: str
    attempt: int
    """The attempt that just failed (1 for the first)."""
    delay: float | None
    """Seconds until the next attempt; ``None`` when ``exhausted``."""
    code: str | None
    exhausted: bool
    at: float


class CacheEvent(NamedTuple):
    """``cached_response`` answered without running the body (``hit``), or ran it."""

    key: str
    hit: bool
    at: float


class FallbackEvent(NamedTuple):
    """``fallback`` served its degraded answer instead of raising ``error``."""

    key: str
    error: str
    """The exception's class name."""
    code: str | None
    at: float


class Alert(NamedTuple):
    """A threshold crossing (``firing=True``) or the recovery from one (``firing=False``)."""

    alert: AlertKind
    key: str
    firing: bool
    value: float
    """1302s per hour, or the success rate, at the time of the check."""
    threshold: float
    window_minutes: int
    at: float


class LeaseLost(NamedTuple):
    """Concurrency leases that expired or vanished in Redis while their calls were still running.

    Meanwhile their slots may have gone to other callers, so the limit may have been exceeded:
    a process was frozen for longer than the backend's ``lease``, or Redis lost its data.
    """

    key: str
    leases: int
    at: float


class LimitChanged(NamedTuple):
    """A learned concurrency limit (``concurrency="auto"``) changed, in the process that changed it.

    ``epoch`` counts the cuts so far: it grew by one when the change was a cut after a 1302.
    """

    key: str
    limit: int
    epoch: int
    at: float


GuardEvent: TypeAlias = (
    CallEvent | AttemptEvent | WaitEvent | RetryEvent | CacheEvent | FallbackEvent | Alert | LeaseLost | LimitChanged
)
Subscriber: TypeAlias = Callable[[GuardEvent], object]


class _Hub:
    """The subscribers, kept as a tuple that is replaced, never changed, so reading needs no lock."""

    __slots__ = ("active", "subscribers")

    def __init__(self) -> None:
        self.subscribers: tuple[Subscriber, ...] = ()
        self.active = False


HUB = _Hub()

#: The wall clock that stamps every event (``at``); tests replace it to place calls in time.
wall_clock = time.time

_lock = threading.Lock()
_failed: set[int] = set()


def subscribe(callback: Subscriber) -> Callable[[], None]:
    """Call ``callback(event)`` for every event from now on; returns a function that unsubscribes.

    Callbacks run synchronously in the thread (or task) that made the guarded call, so keep
    them quick.  An exception in a callback is logged once and never reaches the call.
    """
    if not callable(callback):
        raise TypeError(f"subscribe() needs a callable, got {type(callback).__name__}")
    with _lock:
        HUB.subscribers = (*HUB.subscribers, callback)
        HUB.active = True

    def unsubscribe() -> None:
        with _lock:
            remaining = list(HUB.subscribers)
            if callback in remaining:
                remaining.remove(callback)
            HUB.subscribers = tuple(remaining)
            HUB.active = bool(remaining)

    return unsubscribe


def emit(event: GuardEvent) -> None:
    """Hand ``event`` to every subscriber; a failing subscriber never breaks the call."""
    for callback in HUB.subscribers:
        try:
            callback(event)
        except Exception:
            if id(callback) not in _failed:
                _failed.add(id(callback))
                logger.warning("glm_guard: event subscriber %r raised; it stays subscribed", callback, exc_info=True)
