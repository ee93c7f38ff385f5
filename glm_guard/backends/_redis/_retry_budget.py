"""A key's retry budget shared by every process through Redis, in one round trip per retry.

Only retries talk to Redis.  A logical call is counted in this process (its second noted);
the next retry sends those counts along, as ages in whole seconds, and ``retry_budget.lua``
adds each to the bucket of its own second on the server's clock, then decides.  So another
process's calls are seen once it retries next: the budget a process sees can only be smaller
than the exact one, never larger.  Calls older than the window when they would be sent are
dropped, and calls whose request failed are not sent again (a request that reached Redis
before the link broke must not count them twice).

While Redis is unreachable, or rejects the request, the key's budget in this process decides
alone (the local backend's rule over this process's calls and retries), whatever the rate
limit's ``on_backend_error``: a retry budget only ever withholds retries, so deciding alone
is safe, and failing every retry while Redis is away would turn a short outage into errors.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..._errors import BackendError, BackendRequestError
from .._base import RetryBudget, RetryBudgetPolicy
from .._local_retry_budget import KEEP_SECONDS, RetryCounts

if TYPE_CHECKING:
    from ._backend import RedisBackend

logger = logging.getLogger("glm_guard")


class SharedRetryCounts:
    """One key's retry counts in this process: the calls not yet sent, and the local fallback."""

    def __init__(self, backend: RedisBackend, key: str) -> None:
        self.backend = backend
        self.key = key
        self.redis_key = backend.key(key, "retry_budget")
        self.local = RetryCounts()  # decides while Redis is away; counts every call and retry here
        self._lock = threading.Lock()
        self._unsent: dict[int, int] = {}  # second of time.monotonic() -> calls

    def after_fork(self) -> None:
        """A forked child counts none of its parent's calls: the parent sends them."""
        self._lock = threading.Lock()
        self._unsent = {}
        self.local = RetryCounts()

    def deposit(self) -> None:
        second = int(time.monotonic())
        with self._lock:
            unsent = self._unsent
            if second not in unsent and len(unsent) >= KEEP_SECONDS:
                for old in [old for old in unsent if old <= second - KEEP_SECONDS]:
                    del unsent[old]
            unsent[second] = unsent.get(second, 0) + 1
        self.local.deposit()

    def args(self, policy: RetryBudgetPolicy) -> list[int]:
        """The script's arguments, taking the calls not yet sent (those still in the window)."""
        second = int(time.monotonic())
        with self._lock:
            unsent, self._unsent = self._unsent, {}
        window = policy.seconds
        ages = [item for at, calls in unsent.items() if 0 <= second - at < window for item in (second - at, calls)]
        return [policy.per_mille, policy.min_retries, policy.seconds, KEEP_SECONDS, *ages]

    def decided(self, reply: Any) -> bool:
        allowed = isinstance(reply, list) and bool(reply) and reply[0] == 1
        if allowed:
            self.local.note_retry()
        return allowed

    def failed(self, error: BackendError | BackendRequestError, policy: RetryBudgetPolicy) -> bool:
        if isinstance(error, BackendError):
            self.backend.health.failed(error)
        else:  # a bug or a server set up otherwise: logged, and this process decides alone
            logger.error("glm_guard: retry budget of %s: %s", self.key, error)
        return self.local.withdraw(policy)


class RedisRetryBudget(RetryBudget):
    """``counts`` under one policy."""

    __slots__ = ("_counts",)

    def __init__(self, counts: SharedRetryCounts, policy: RetryBudgetPolicy) -> None:
        super().__init__(counts.key, policy)
        self._counts = counts

    def deposit(self) -> None:
        self._counts.deposit()

    def withdraw(self) -> bool:
        counts = self._counts
        if not counts.backend.health.available():
            return counts.local.withdraw(self.policy)
        try:
            reply = counts.backend.connections.run("retry_budget", [counts.redis_key], counts.args(self.policy))
        except (BackendError, BackendRequestError) as error:
            return counts.failed(error, self.policy)
        return counts.decided(reply)

    async def withdraw_async(self) -> bool:
        counts = self._counts
        if not counts.backend.health.available():
            return counts.local.withdraw(self.policy)
        try:
            reply = await counts.backend.connections.run_async(
                "retry_budget", [counts.redis_key], counts.args(self.policy)
            )
        except (BackendError, BackendRequestError) as error:
            return counts.failed(error, self.policy)
        return counts.decided(reply)
