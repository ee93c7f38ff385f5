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

    __slots__ = (
        "bursts",
        "cooldown_until",
        "fixed",
        "in_flight",
        "keep",
        "learned",
        "longest_period",
        "spent",
        "spent_since",
        "spent_total",
        "starts",
        "token_period",
    )

    def __init__(self) -> None:
        self.starts: deque[float] = deque()
        self.in_flight = 0
        self.cooldown_until = -_INF
        self.keep = 0
        self.longest_period = 0.0
        self.learned: LearnedLimit | None = None  # the first ``concurrency="auto"`` policy starts it
        self.fixed: int | None = None  # the last fixed concurrency limit asked for (monitoring draws it)
        # Token reservations, oldest first: [start, tokens], the amount settled in place when the
        # call ends.  ``spent_total`` sums those started after ``spent_since`` (all still listed).
        self.spent: deque[list[float]] = deque()
        self.spent_total = 0
        self.spent_since = -_INF
        self.token_period = 0.0
        self.bursts: deque[float] = deque()  # the starts that count against a burst cap, oldest first

    def copy_logs(self, other: WindowState) -> None:
        """Take ``other``'s token reservations and burst starts (for a what-if run; the entries themselves are shared
        and only a settle, never a what-if, changes them)."""
        self.spent = deque(other.spent)
        self.spent_total = other.spent_total
        self.spent_since = other.spent_since
        self.token_period = other.token_period
        self.bursts = deque(other.bursts)

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
        if policy.tokens is not None:
            at = max(at, self._tokens_free_at(policy, now))
        if policy.burst is not None:
            most, seconds = policy.burst
            if len(self.bursts) >= most and self.bursts[-most] + seconds > at:
                at = self.bursts[-most] + seconds
        calls = policy.calls
        if calls is not None and len(self.starts) >= calls:
            # The calls-th most recent start must have left the window (t - period, t].
            free_at = self.starts[-calls] + policy.period
            if free_at > at:
                at = free_at
        return at

    def _tokens_free_at(self, policy: LimitPolicy, now: float) -> float:
        """When ``policy.reserve`` more tokens fit: every reservation started after ``now - period``
        counts, so a start admitted here keeps every window it lies in within the budget."""
        assert policy.tokens is not None
        self.token_period = max(self.token_period, policy.period)
        self._forget_spent(now - self.token_period)
        excess = self.spent_total + policy.reserve - policy.tokens
        if excess <= 0:
            return now
        for start, amount in self.spent:  # the oldest leave the window first
            excess -= int(amount)
            if excess <= 0:
                return start + self.token_period
        return now + self.token_period  # not reached while reserve <= tokens

    def _forget_spent(self, horizon: float) -> None:
        spent = self.spent
        while spent and spent[0][0] <= horizon:
            self.spent_total -= int(spent.popleft()[1])
        if horizon > self.spent_since:
            self.spent_since = horizon

    def admit(self, policy: LimitPolicy, now: float) -> Admission:
        """Record a start now; returns where it entered the learned limit (epoch 0 without one)."""
        self.in_flight += 1
        epoch = 0
        if isinstance(policy.concurrency, AutoConcurrency) and self.learned is not None:
            epoch = self.learned.admitted(self.in_flight)
        self._record_start(policy, now)
        if policy.tokens is not None:
            self.spent.append([now, policy.reserve])
            self.spent_total += policy.reserve
        if policy.burst is not None:
            self.bursts.append(now)
            while len(self.bursts) > policy.burst[0]:  # only the last `most` starts can matter
                self.bursts.popleft()
        return Admission(epoch, self.in_flight)

    def settle(self, entry: list[float], used: int) -> None:
        """A call's reservation becomes what it ``used`` (0: given back), if it still counts."""
        if entry[0] > self.spent_since:
            self.spent_total += used - int(entry[1])
        entry[1] = used

    def lower_budget(self, left: int, reset: float, budget: int, period: float, now: float) -> None:
        """The provider says only ``left`` tokens are left until ``reset`` seconds from ``now``: if
        ``budget`` has more left in the window, a reservation of the difference is added that leaves
        the window at the reset.  It counts in the next report's comparison, so reports never stack."""
        self.token_period = max(self.token_period, period)
        self._forget_spent(now - self.token_period)
        excess = budget - self.spent_total - left
        if excess <= 0 or not reset > 0:
            return
        # At most one window ahead (a later reset is heard again on a later answer): never after
        # ``now``, so the log stays in start order; later than ``spent_since``, so it counts.
        start = now + min(reset, self.token_period) - self.token_period
        spent = self.spent
        at = len(spent)
        while at > 0 and spent[at - 1][0] > start:  # kept oldest first; the newest are at the end
            at -= 1
        spent.insert(at, [start, excess])
        self.spent_total += excess

    def recent(self, now: float, period: float, since: float) -> tuple[list[float], list[tuple[float, int]]]:
        """The ages of the starts of the last ``period``, and ``(age, tokens)`` of the token
        reservations in it made after ``since`` (what an adoption writes back to Redis)."""
        horizon = max(now - period, since)
        starts = [now - start for start in self.starts if start > now - period]
        return starts, [(now - start, int(amount)) for start, amount in self.spent if start > horizon and amount > 0]

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
