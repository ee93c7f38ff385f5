"""Identical calls running at once in one process: one runs the body, the others wait for it.

Most calls are never joined, so a call costs one small record; a follower brings its own way
to be woken (an event for a thread, a future on its own event loop), so one table serves
threads and event loops alike.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Hashable
from typing import Any

__all__ = ["InFlight", "Leader", "LeaderGone", "Pending"]

Waker = threading.Event | tuple[Any, Any]  # an event, or (loop, future on that loop)


class LeaderGone(Exception):
    """The call the others were waiting on was cancelled; one of them takes over."""


class Pending:
    """One call running now, and the identical calls waiting for its outcome."""

    __slots__ = ("followers", "outcome")

    def __init__(self) -> None:
        self.followers: list[Waker] = []
        self.outcome: tuple[object, bool] | BaseException | None = None

    def result(self) -> tuple[object, bool]:
        """``(value, degraded)`` of the leader's call, or its exception raised here."""
        outcome = self.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome


class InFlight:
    """Calls running now, by key, so identical concurrent calls share one outcome."""

    __slots__ = ("__weakref__", "_calls", "_lock")

    def __init__(self) -> None:
        self._calls: dict[Hashable, Pending] = {}
        self._lock = threading.Lock()
        _LIVE.add(self)

    def lead(self, key: Hashable) -> Pending | None:
        """Register the caller as the one running ``key``; ``None`` if another already is."""
        with self._lock:
            if key in self._calls:
                return None
            pending = self._calls[key] = Pending()
            return pending

    def follow(self, key: Hashable, waker: Waker) -> Pending | None:
        """Wait on the call running ``key`` (woken through ``waker``); ``None`` if it just ended."""
        with self._lock:
            pending = self._calls.get(key)
            if pending is not None:
                pending.followers.append(waker)
            return pending

    def leading(self, key: Hashable, pending: Pending) -> Leader:
        """The leader's run of ``key`` (a context manager): its waiters are answered as it ends."""
        return Leader(self, key, pending)

    def settle(self, key: Hashable, pending: Pending, outcome: tuple[object, bool] | BaseException) -> None:
        """End the leader's call with ``outcome`` and wake whoever waits for it."""
        with self._lock:
            if self._calls.get(key) is pending:
                del self._calls[key]
            pending.outcome = outcome
            followers = pending.followers
        for waker in followers:
            if isinstance(waker, threading.Event):
                waker.set()
            else:
                loop, future = waker
                with contextlib.suppress(RuntimeError):  # the follower's loop is gone
                    loop.call_soon_threadsafe(_wake_future, future)

    def _after_fork(self) -> None:
        # The leaders were threads of the parent: none runs here, so nobody may wait for them,
        # and a lock one of them held stays held in the child.
        self._lock = threading.Lock()
        self._calls = {}


class Leader:
    """One leader's run; ``answered(value, degraded)`` notes its answer and passes the value on.

    Leaving the ``with`` block settles the waiters: with the answer, with the exception raised,
    or, when the leader was cancelled, with :class:`LeaderGone` so one of them takes over.
    """

    __slots__ = ("_in_flight", "_key", "_outcome", "_pending")

    def __init__(self, in_flight: InFlight, key: Hashable, pending: Pending) -> None:
        self._in_flight = in_flight
        self._key = key
        self._pending = pending
        self._outcome: tuple[object, bool] | None = None

    def answered(self, value: object, degraded: bool) -> object:
        self._outcome = (value, degraded)
        return value

    def __enter__(self) -> Leader:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        outcome: tuple[object, bool] | BaseException = LeaderGone() if self._outcome is None else self._outcome
        if isinstance(error, Exception):
            outcome = error
        self._in_flight.settle(self._key, self._pending, outcome)


def _wake_future(future: Any) -> None:
    if not future.done():
        future.set_result(None)


_LIVE: weakref.WeakSet[InFlight] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for in_flight in list(_LIVE):
        in_flight._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
