"""The in-process backend: exact sliding-window limits, FIFO waiting, no server.

Why not a leaky bucket: ``aiolimiter.AsyncLimiter(calls, period)`` admits a full bucket and
then the drip, so up to ``2 * calls`` calls can start inside one ``period``; shrinking the
bucket stops that but spaces calls out and wastes the allowance.  A log of the last
``calls`` start times gives both properties the guard promises: a burst of ``calls`` when
the budget is free, and never more than ``calls`` starts in any window of ``period``.
The log holds at most ``calls`` floats per key.

One limiter serves threads and event loops alike: its state sits behind a
``threading.Lock`` and each waiter is woken through its own primitive (an event for a
thread, a future on the waiter's own loop), so nothing loop-bound is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator

from .._errors import RateLimitTimeout
from ._base import (
    AsyncPermit,
    AutoConcurrency,
    Backend,
    CacheStore,
    LearnedState,
    LearnsLimits,
    Limiter,
    LimitPolicy,
    Outcome,
    Permit,
    ProviderLeft,
    RetryBudgetPolicy,
)
from ._learned import Admission, report_limit
from ._live import join, leave
from ._local_permits import AsyncLearning, AsyncProbe, AsyncRelease, AsyncSpend, Learning, Probe, Spend
from ._local_retry_budget import LocalRetryBudget, RetryCounts
from ._pauses import KeyPaused, Pause
from ._window import WindowState

__all__ = ["LocalBackend", "LocalCacheStore", "LocalLimiter"]

Clock = Callable[[], float]
_INF = math.inf
_NOT_YET = Admission(0, 0)


class _Waiter:
    __slots__ = ("admission", "event", "future", "granted", "is_head", "loop", "policy", "probe", "spent")

    def __init__(self, policy: LimitPolicy, loop: asyncio.AbstractEventLoop | None) -> None:
        self.policy = policy
        self.loop = loop
        self.event: threading.Event | None = threading.Event() if loop is None else None
        self.future: asyncio.Future[None] | None = None
        self.granted = False
        self.is_head = False
        self.admission = _NOT_YET  # where it entered the learned limit, once granted
        self.probe = False  # the one call let through at the end of a pause
        self.spent: list[float] | None = None  # its token reservation, once granted

    def arm(self) -> None:
        """Get ready to be woken: a fresh event state, or a fresh future on the waiter's loop."""
        if self.event is not None:
            self.event.clear()
        else:
            assert self.loop is not None
            self.future = self.loop.create_future()

    def wake(self) -> bool:
        """Wake the waiter; ``False`` if it can never wake (its event loop was closed)."""
        if self.event is not None:
            self.event.set()
            return True
        future, loop = self.future, self.loop
        if loop is not None and loop.is_closed():
            return False
        if future is not None and loop is not None and not future.done():
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # closed between the check and the call
                return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LocalLimiter(Limiter):
    """Sliding-window rate, concurrency and cooldown for one key, within one process."""

    __slots__ = ("_async_permit", "_clock", "_lock", "_pause", "_waiters", "key", "state")

    def __init__(self, key: str, clock: Clock = time.monotonic) -> None:
        self.key = key
        self.state = WindowState()
        self._clock = clock
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._async_permit = AsyncRelease(self)
        self._pause: Pause | None = None

    def __repr__(self) -> str:
        return f"<LocalLimiter {self.key!r} in_flight={self.state.in_flight} waiting={len(self._waiters)}>"

    # -- admission -------------------------------------------------------------------------

    def _try_now(self, policy: LimitPolicy) -> tuple[Admission, list[float] | None] | None:
        """Admit at once if nobody is queued and the policy allows it (caller holds the lock):
        where the call entered the learned limit and its token reservation, or ``None`` when
        the caller must queue."""
        if self._waiters:
            if self.state.learned is not None:
                self.state.learned.refused()
            return None
        now = self._clock()
        state = self.state
        if state.next_admission(policy, now) <= now:
            return self._admit(policy, now)
        return None

    def _admit(self, policy: LimitPolicy, now: float) -> tuple[Admission, list[float] | None]:
        admission = self.state.admit(policy, now)
        return admission, self.state.spent[-1] if policy.tokens is not None else None

    def acquire(self, policy: LimitPolicy, max_wait: float | None) -> Permit:
        with self._lock:
            probing = self._probing()
            admitted = self._try_now(policy)
            if admitted is None:
                waiter = self._enqueue(policy, max_wait, None, probing)
        if admitted is None:
            self._wait_sync(waiter, max_wait)
            admitted = waiter.admission, waiter.spent
        admission, spent = admitted
        permit: Permit = Learning(self, admission) if isinstance(policy.concurrency, AutoConcurrency) else self
        if probing is not None:
            permit = Probe(self, permit, probing)
        return permit if spent is None else Spend(self, permit, spent)  # outermost: the caller sets ``used``

    async def acquire_async(self, policy: LimitPolicy, max_wait: float | None) -> AsyncPermit:
        with self._lock:
            probing = self._probing()
            admitted = self._try_now(policy)
            if admitted is None:
                waiter = self._enqueue(policy, max_wait, asyncio.get_running_loop(), probing)
        if admitted is None:
            await self._wait_async(waiter, max_wait)
            admitted = waiter.admission, waiter.spent
        admission, spent = admitted
        learning = isinstance(policy.concurrency, AutoConcurrency)
        permit: AsyncPermit = AsyncLearning(self, admission) if learning else self._async_permit
        if probing is not None:
            permit = AsyncProbe(self, permit, probing)
        return permit if spent is None else AsyncSpend(self, permit, spent)

    def settle(self, spent: list[float], used: int | None, told: ProviderLeft | None = None) -> None:
        """A reservation becomes what it ``used`` (``None``: stays), the budget what the provider ``told``."""
        with self._lock:
            if used is not None:
                self.state.settle(spent, used)
            if told is not None:
                self.state.lower_budget(*told, self._clock())
            if self._waiters:
                self._dispatch(self._clock())

    # -- pauses that refuse at once (a quota window, arrears, an overloaded model) ----------

    def _probing(self) -> float | None:
        """Raise while a pause is in force; at its end, the caller is the probe (the pause's
        start is returned); ``None``: no pause (caller holds the lock)."""
        pause = self._pause
        if pause is None:
            return None
        now = self._clock()
        if not pause.admits(now):
            raise KeyPaused(self.key, pause.reason, pause.until - now)
        return pause.since

    def pause(self, reason: str, seconds: float, probe_every: float) -> None:
        now = self._clock()
        with self._lock:
            if self._pause is None or now + seconds > self._pause.until:
                self._pause = Pause(reason, now + seconds, probe_every, now)
            for waiter in self._waiters:
                waiter.wake()  # queued callers find the pause and leave

    async def pause_async(self, reason: str, seconds: float, probe_every: float) -> None:
        self.pause(reason, seconds, probe_every)

    def end_pause(self, since: float) -> None:
        """The probe of the pause that began at ``since`` succeeded: the key is open again."""
        with self._lock:
            if self._pause is not None and self._pause.since == since:
                self._pause = None

    def release(self, outcome: Outcome | None = None) -> None:
        with self._lock:
            self.state.release()
            if self._waiters:
                self._dispatch(self._clock())

    def finished(self, admission: Admission, outcome: Outcome | None) -> None:
        """A call under the learned limit ended: its slot is free, and its answer teaches the limit."""
        with self._lock:
            self.state.release()
            learned = self.state.learned
            change = None
            if outcome is not None and learned is not None and self.state.learn(admission, outcome):
                change = learned.limit, learned.epoch
            if self._waiters:
                self._dispatch(self._clock())
        if change is not None:  # reported outside the lock: a subscriber may call back in
            report_limit(self.key, *change)

    def learned_limit(self) -> int | None:
        learned = self.state.learned
        return None if learned is None else learned.limit

    def cooldown(self, seconds: float) -> None:
        with self._lock:
            self.state.pause_until(self._clock() + seconds)

    def count_in_flight(self, calls: int) -> None:
        """Count ``calls`` this limiter did not admit as in flight; each ends with a ``release()``."""
        with self._lock:
            self.state.in_flight += calls

    def recent(self, period: float, since: float) -> tuple[float, list[float], list[tuple[float, int]]]:
        """This limiter's clock now, and the ages (seconds) of its starts of the last ``period`` and
        of its token reservations in it made after ``since``, with their tokens."""
        with self._lock:
            now = self._clock()
            return now, *self.state.recent(now, period, since)

    async def cooldown_async(self, seconds: float) -> None:
        self.cooldown(seconds)

    # -- waiting ---------------------------------------------------------------------------

    def _enqueue(
        self, policy: LimitPolicy, max_wait: float | None, loop: asyncio.AbstractEventLoop | None, probing: float | None
    ) -> _Waiter:
        if max_wait is not None:
            expected = self._expected_wait(policy, self._clock())
            if expected is not None and expected > max_wait:
                raise RateLimitTimeout(self.key, max_wait, expected)
        waiter = _Waiter(policy, loop)
        waiter.probe = probing is not None
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            waiter.is_head = True
        return waiter

    def _expected_wait(self, policy: LimitPolicy, now: float) -> float | None:
        """How long a caller queued now would wait, or ``None`` if that depends on call durations."""
        ahead = [*self._waiters, None]
        state = WindowState()
        state.starts = deque(self.state.starts)
        state.keep = max(self.state.keep, policy.calls or 0)
        state.longest_period = self.state.longest_period
        state.in_flight = self.state.in_flight
        state.cooldown_until = self.state.cooldown_until
        state.copy_logs(self.state)
        if self.state.learned is not None:
            state.learned = dataclasses.replace(self.state.learned)
        at = now
        for waiter in ahead:
            waiter_policy = policy if waiter is None else waiter.policy
            at = state.next_admission(waiter_policy, at)
            if at == _INF:
                return None
            state.admit(waiter_policy, at)
        return at - now

    def _dispatch(self, now: float) -> None:
        """Grant queued callers in arrival order while the limits allow (caller holds the lock)."""
        waiters = self._waiters
        while waiters:
            head = waiters[0]
            if self.state.next_admission(head.policy, now) > now:
                # Wake the head even if it already was one: what it waits for may have changed
                # (a slot came free, but a cooldown now holds it), so it must time its wait anew.
                head.is_head = True
                if head.wake():
                    return
                waiters.popleft()  # its loop is closed: it would block everyone behind it
                continue
            waiters.popleft()
            head.admission, head.spent = self._admit(head.policy, now)
            head.granted = True
            if not head.wake():
                self._give_back(head)  # granted to a task whose loop is gone

    def _give_back(self, waiter: _Waiter) -> None:
        """Undo a grant nobody will use: its slot, and its token reservation (caller holds the lock)."""
        self.state.release()
        if waiter.spent is not None:
            self.state.settle(waiter.spent, 0)

    def _head_timeout(self, waiter: _Waiter, now: float) -> float | None:
        if not waiter.is_head:
            return None
        at = self.state.next_admission(waiter.policy, now)
        return None if at == _INF else max(0.0, at - now)

    def _abandon(self, waiter: _Waiter) -> None:
        """Undo a wait that ended by cancellation, timeout or interrupt (caller holds the lock)."""
        if waiter.granted:
            self._give_back(waiter)
        else:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        if self._waiters:
            self._dispatch(self._clock())

    def _not_yet(self, waiter: _Waiter, deadline: float | None) -> float | None:
        """:data:`_GRANTED`, or how long to sleep before looking again (the waiter is armed for
        it); raises when ``deadline`` has passed."""
        with self._lock:
            now = self._clock()
            self._dispatch(now)
            if waiter.granted:
                return _GRANTED
            pause = self._pause
            if pause is not None and not waiter.probe and now < pause.until:
                raise KeyPaused(self.key, pause.reason, pause.until - now)
            timeout = self._head_timeout(waiter, now)
            if deadline is not None:
                left = deadline - now
                if left <= 0:
                    raise _DeadlinePassed
                timeout = left if timeout is None else min(timeout, left)
            waiter.arm()
            return timeout

    def _wait_sync(self, waiter: _Waiter, max_wait: float | None) -> None:
        deadline = None if max_wait is None else self._clock() + max_wait
        event = waiter.event
        assert event is not None
        with self._leaving_the_queue_on_error(waiter, max_wait):
            while (timeout := self._not_yet(waiter, deadline)) != _GRANTED:
                event.wait(timeout)

    async def _wait_async(self, waiter: _Waiter, max_wait: float | None) -> None:
        deadline = None if max_wait is None else self._clock() + max_wait
        with self._leaving_the_queue_on_error(waiter, max_wait):
            while (timeout := self._not_yet(waiter, deadline)) != _GRANTED:
                future = waiter.future
                assert future is not None  # armed by _not_yet
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await future

    @contextlib.contextmanager
    def _leaving_the_queue_on_error(self, waiter: _Waiter, max_wait: float | None) -> Iterator[None]:
        """A waiter that times out, is cancelled or fails leaves the queue (passing on a grant it got)."""
        try:
            yield
        except BaseException as error:
            with self._lock:
                self._abandon(waiter)
            if isinstance(error, _DeadlinePassed):
                raise RateLimitTimeout(self.key, max_wait or 0.0, None) from None
            raise

    def _after_fork(self) -> None:
        """In a forked child no other thread exists: drop their waiters and their permits."""
        self._lock = threading.Lock()
        self._waiters.clear()
        self.state.in_flight = 0


_GRANTED = -1.0  # what _not_yet answers once the permit is the waiter's (never a timeout)


class _DeadlinePassed(Exception):
    pass


class LocalCacheStore(CacheStore):
    """A cachetools TTL + LRU cache behind a lock (cachetools caches are not thread-safe)."""

    __slots__ = ("_data", "_lock")
    shared = False

    def __init__(self, ttl: float | None, maxsize: int, timer: Clock = time.monotonic) -> None:
        import cachetools  # deferred: keeps `import glm_guard` light

        self._data: cachetools.Cache[Hashable, object]
        if ttl is None:
            self._data = cachetools.LRUCache(maxsize)
        else:
            self._data = cachetools.TTLCache(maxsize, ttl, timer)
        self._lock = threading.Lock()
        _LIVE_STORES.add(self)

    def get(self, key: Hashable) -> tuple[bool, object]:
        with self._lock:
            try:
                return True, self._data[key]
            except KeyError:
                return False, None

    def set(self, key: Hashable, value: object) -> None:
        with self._lock:
            self._data[key] = value

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class LocalBackend(Backend, LearnsLimits):
    """State in this process only: the default, needing no server.

    Limiters are shared by key within the backend, so every function decorated with the
    same key shares one budget; caches belong to the decorated function that asked for them.
    """

    name = "local"

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._limiters: dict[str, LocalLimiter] = {}
        self._retry_counts: dict[str, RetryCounts] = {}
        self._lock = threading.Lock()
        _LIVE_BACKENDS.add(self)
        join(self)  # so monitoring finds its learned limits

    def __repr__(self) -> str:
        return f"<LocalBackend keys={len(self._limiters)}>"

    def limiter(self, key: str) -> LocalLimiter:
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = LocalLimiter(key, self._clock)
            return limiter

    def retry_budget(self, key: str, policy: RetryBudgetPolicy) -> LocalRetryBudget:
        with self._lock:
            counts = self._retry_counts.get(key)
            if counts is None:
                counts = self._retry_counts[key] = RetryCounts(self._clock)
        return LocalRetryBudget(key, policy, counts)

    def cache(
        self, namespace: str, *, ttl: float | None, maxsize: int, serializer: str = "json", owner: str = ""
    ) -> LocalCacheStore:
        return LocalCacheStore(ttl, maxsize, self._clock)

    def learned_limits(self, keys: Iterable[str] = ()) -> dict[str, LearnedState]:
        """In one process the limiters hold every learned limit; ``keys`` adds nothing."""
        with self._lock:
            learned = [(limiter.key, limiter.state.learned) for limiter in self._limiters.values()]
        return {key: LearnedState(state.limit, state.epoch) for key, state in learned if state is not None}

    def fixed_limits(self) -> dict[str, int]:
        with self._lock:
            fixed = [(limiter.key, limiter.state.fixed) for limiter in self._limiters.values()]
        return {key: limit for key, limit in fixed if limit is not None}

    def close(self) -> None:
        leave(self)  # monitoring no longer lists its learned limits; its limits still work

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        for limiter in self._limiters.values():
            limiter._after_fork()
        for counts in self._retry_counts.values():
            counts.after_fork()


_LIVE_BACKENDS: weakref.WeakSet[LocalBackend] = weakref.WeakSet()
_LIVE_STORES: weakref.WeakSet[LocalCacheStore] = weakref.WeakSet()


def _reset_after_fork() -> None:
    """In a forked child no other thread exists: a lock one of them held would never open."""
    for backend in list(_LIVE_BACKENDS):
        backend._after_fork()
    for store in list(_LIVE_STORES):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
