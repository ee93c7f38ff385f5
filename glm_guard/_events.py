"""What each guard did, as typed events for users' subscribers, and the switchboard behind them.

Every decorator reports through :data:`HUB`: it appends a plain tuple to a buffer that the
stats recorder folds in later (so the caller pays for an append, not for the arithmetic), and
it builds a typed event only when somebody has subscribed.  One attribute read
(``HUB.active``) decides whether there is anything to do at all.

Events carry the stats key (``module.qualname`` or the ``rate_limited`` key), durations and
error codes: never arguments, results or prompt text.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "AttemptEvent",
    "CacheEvent",
    "CallEvent",
    "FallbackEvent",
    "GuardEvent",
    "RetryEvent",
    "WaitEvent",
    "subscribe",
]

logger = logging.getLogger("glm_guard")

ErrorKind: TypeAlias = Literal["rate_limit", "permanent", "guard_timeout", "other"]


@dataclass(frozen=True, slots=True)
class CallEvent:
    """A call finished as its caller saw it (the outermost guard of a stack reports it)."""

    key: str
    seconds: float
    outcome: Literal["success", "fallback", "error"]
    error: str | None
    """The exception's class name when ``outcome == "error"``."""
    at: float
    """Wall-clock time (``time.time()``) of the end of the call."""


@dataclass(frozen=True, slots=True)
class AttemptEvent:
    """One run of the user's function: what the provider answered, how long it took."""

    key: str
    seconds: float
    error_kind: ErrorKind | None
    """``None`` for an answer; else the classifier's verdict on the error."""
    code: str | None
    """The provider's error code (``"1302"``), when it named one."""
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    at: float


@dataclass(frozen=True, slots=True)
class WaitEvent:
    """``rate_limited`` admitted a call (or gave up waiting) after ``seconds``."""

    key: str
    seconds: float
    timed_out: bool
    at: float


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """``retry_on_1302`` scheduled another attempt, or gave up (``exhausted``)."""

    key: str
    attempt: int
    """The attempt that just failed (1 for the first)."""
    delay: float | None
    """Seconds until the next attempt; ``None`` when ``exhausted``."""
    code: str | None
    exhausted: bool
    at: float


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """``cached_response`` answered from the cache (``hit``) or ran the function."""

    key: str
    hit: bool
    at: float


@dataclass(frozen=True, slots=True)
class FallbackEvent:
    """``fallback`` served its degraded answer instead of raising ``error``."""

    key: str
    error: str
    """The exception's class name."""
    code: str | None
    at: float


GuardEvent: TypeAlias = CallEvent | AttemptEvent | WaitEvent | RetryEvent | CacheEvent | FallbackEvent
Subscriber: TypeAlias = Callable[[GuardEvent], object]


class _Hub:
    """Process-wide switches, read on every guarded call, so kept to plain attributes."""

    __slots__ = ("active", "buffer", "recording", "subscribers")

    def __init__(self) -> None:
        self.recording = True
        self.subscribers: tuple[Subscriber, ...] = ()
        self.active = True
        # deque.append and popleft are atomic: any thread appends, the recorder drains.
        self.buffer: collections.deque[tuple[object, ...]] = collections.deque()

    def refresh(self) -> None:
        self.active = self.recording or bool(self.subscribers)


HUB = _Hub()
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
        HUB.refresh()

    def unsubscribe() -> None:
        with _lock:
            remaining = list(HUB.subscribers)
            if callback in remaining:
                remaining.remove(callback)
            HUB.subscribers = tuple(remaining)
            HUB.refresh()

    return unsubscribe


def deliver(event: GuardEvent) -> None:
    """Hand ``event`` to every subscriber; a failing subscriber never breaks the call."""
    for callback in HUB.subscribers:
        try:
            callback(event)
        except Exception:
            if id(callback) not in _failed:
                _failed.add(id(callback))
                logger.warning("glm_guard: event subscriber %r raised; it stays subscribed", callback, exc_info=True)


def set_recording(enabled: bool) -> None:
    with _lock:
        HUB.recording = enabled
        HUB.refresh()
