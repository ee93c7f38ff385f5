"""A key's retry budget in this process: calls and retries counted in one-second buckets.

Buckets rather than a log of times: a deposit is one dict lookup and the memory is bounded
by the window, however many calls a second a key makes.  The Redis backend keeps the same
buckets in a hash and decides with the same rule (:meth:`RetryBudgetPolicy.allows`), so the
two backends agree to the call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from ._base import RETRY_WINDOW_RANGE, RetryBudget, RetryBudgetPolicy

__all__ = ["LocalRetryBudget", "RetryCounts"]

#: Buckets older than the longest window any policy may name are dropped.
KEEP_SECONDS: Final = int(RETRY_WINDOW_RANGE[1])


class RetryCounts:
    """One key's calls and retries per second of ``clock``, for every policy of the key."""

    __slots__ = ("_buckets", "_clock", "_lock")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[int, list[int]] = {}  # second -> [calls, retries]

    def after_fork(self) -> None:
        """A forked child's own lock: one another thread held at the fork would never open."""
        self._lock = threading.Lock()

    def _bucket(self, second: int) -> list[int]:
        bucket = self._buckets.get(second)
        if bucket is None:  # a new second: the time to forget the ones no window reaches
            for old in [old for old in self._buckets if old <= second - KEEP_SECONDS]:
                del self._buckets[old]
            bucket = self._buckets[second] = [0, 0]
        return bucket

    def deposit(self) -> None:
        second = int(self._clock())
        with self._lock:
            self._bucket(second)[0] += 1

    def note_retry(self) -> None:
        """A retry another authority (the shared store) allowed: counted here all the same."""
        second = int(self._clock())
        with self._lock:
            self._bucket(second)[1] += 1

    def totals(self, policy: RetryBudgetPolicy) -> tuple[int, int]:
        """``(calls, retries)`` in ``policy``'s window, the current second included."""
        with self._lock:
            return self._totals(policy, int(self._clock()))

    def _totals(self, policy: RetryBudgetPolicy, second: int) -> tuple[int, int]:
        first = second - policy.seconds
        calls = retries = 0
        for at, (deposits, withdrawals) in self._buckets.items():
            if first < at <= second:
                calls += deposits
                retries += withdrawals
        return calls, retries

    def withdraw(self, policy: RetryBudgetPolicy) -> bool:
        second = int(self._clock())
        with self._lock:
            if not policy.allows(*self._totals(policy, second)):
                return False
            self._bucket(second)[1] += 1
            return True


class LocalRetryBudget(RetryBudget):
    """``counts`` under one policy."""

    __slots__ = ("counts",)

    def __init__(self, key: str, policy: RetryBudgetPolicy, counts: RetryCounts) -> None:
        super().__init__(key, policy)
        self.counts = counts

    def deposit(self) -> None:
        self.counts.deposit()

    def withdraw(self) -> bool:
        return self.counts.withdraw(self.policy)

    async def withdraw_async(self) -> bool:
        return self.counts.withdraw(self.policy)
