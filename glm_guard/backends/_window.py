"""The pure admission algorithm of one key: a log of recent starts, calls in flight, a cooldown.

Kept free of threads, waiting and clocks, so property tests drive it with any arrival times
and the Redis script is checked against the same oracle.
"""

from __future__ import annotations

import math
from collections import deque

from .._auto_concurrency import AutoConcurrency
from ._base import LimitPolicy, Outcome
from ._learned import Admission, LearnedLimit

__all__ = ["WindowState"]

_INF = math.inf


class WindowState:
    """The pure admission algorithm for one key, with no locking and no waiting.

    ``next_admission`` answers "when could one more call start?"; ``admit`` records a start.
    Kept free of threads and clocks so property tests can drive it with any arrival times.
    """

    __slots__ = ("cooldown_until", "fixed", "in_flight", "keep", "learned", "longest_period", "starts")

    def __init__(self) -> None:
        self.starts: deque[float] = deque()
        self.in_flight = 0
        self.cooldown_until = -_INF
        self.keep = 0
        self.longest_period = 0.0
        self.learned: LearnedLimit | None = None  # the first ``concurrency="auto"`` policy starts it
        self.fixed: int | None = None  # the last fixed concurrency limit asked for (monitoring draws it)

    def concurrency(self, policy: LimitPolicy) -> int | None:
        """The policy's concurrency limit now: its number, or the one learned for the key."""
        limit = policy.concurrency
        if not isinstance(limit, AutoConcurrency):
            if limit is not None:
                self.fixed = limit
            return limit
        if self.learned is None:
            self.learned = LearnedLimit.starting(limit.min, limit.max, limit.start)
        self.learned.lowest, self.learned.highest = limit.min, limit.max
        return min(max(self.learned.limit, limit.min), limit.max)

    def next_admission(self, policy: LimitPolicy, now: float) -> float:
        """Earliest time >= ``now`` the policy admits a start; ``inf`` while concurrency is full."""
        concurrency = self.concurrency(policy)
        if concurrency is not None and self.in_flight >= concurrency:
            if self.learned is not None:
                self.learned.refused()
            return _INF
        at = self.cooldown_until if self.cooldown_until > now else now
        calls = policy.calls
        if calls is not None and len(self.starts) >= calls:
            # The calls-th most recent start must have left the window (t - period, t].
            free_at = self.starts[-calls] + policy.period
            if free_at > at:
                at = free_at
        return at

    def admit(self, policy: LimitPolicy, now: float) -> Admission:
        """Record a start now; returns where it entered the learned limit (epoch 0 without one)."""
        self.in_flight += 1
        epoch = 0
        if isinstance(policy.concurrency, AutoConcurrency) and self.learned is not None:
            epoch = self.learned.admitted(self.in_flight)
        self._record_start(policy, now)
        return Admission(epoch, self.in_flight)

    def _record_start(self, policy: LimitPolicy, now: float) -> None:
        calls = policy.calls
        if calls is None:
            return
        if calls > self.keep:
            self.keep = calls
        if policy.period > self.longest_period:
            self.longest_period = policy.period
        starts = self.starts
        starts.append(now)
        while len(starts) > self.keep:
            starts.popleft()
        horizon = now - self.longest_period
        while starts and starts[0] <= horizon:
            starts.popleft()

    def release(self) -> None:
        if self.in_flight > 0:
            self.in_flight -= 1

    def learn(self, admission: Admission, outcome: Outcome) -> bool:
        """What a call's answer teaches the learned limit (call after :meth:`release`); ``True`` on a change."""
        if self.learned is None:
            return False
        if outcome is Outcome.LIMITED:
            return self.learned.limited(admission.epoch, admission.others(self.in_flight))
        return self.learned.succeeded(admission.epoch)

    def pause_until(self, deadline: float) -> None:
        if deadline > self.cooldown_until:
            self.cooldown_until = deadline
