"""The Redis backend: one limit, one concurrency pool, one cooldown, one cache for every process.

Key layout, for a limiter key ``K`` and prefix ``P`` (default ``glm_guard:``)::

    P{K}:starts     ZSET  the last ``calls`` start times (expires after period + 1 s)
    P{K}:leases     ZSET  concurrency leases -> expiry (expires after 2 leases + 1 s)
    P{K}:cooldown   STR   pause deadline in server ms (expires at the deadline)
    P{K}:released   pub/sub channel: a lease was given back
    P{K}:retry_budget HASH calls ("d<s>") and retries ("r<s>") per server second (expires after 61 s)
    Pprocesses      ZSET  live processes -> expiry (the heartbeat)
    Pcache:v2:N:D   STR   cached value (expires after the ttl); v2 the key format, N, D digests
    P...:D:fill     STR   who is computing D right now (expires after the fill lease)

The ``{K}`` hash tag keeps one key's data in one Redis Cluster slot.  The stats keys are
described in ``_shared_stats``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import os
import threading
from collections.abc import Iterable
from typing import Any, cast

from ... import _validate
from ..._auto_concurrency import AutoConcurrency
from ..._config import check_redis_url, get_settings, mask_url
from ..._errors import BackendError, BackendRequestError
from .._base import (
    Backend,
    LearnedState,
    LearnsLimits,
    LimitPolicy,
    ReportsOutages,
    RetryBudgetPolicy,
    SharedStats,
    SharesStats,
)
from .._learned import stored_state
from .._live import join, leave, live_backends
from ._cache import RedisCacheStore
from ._connections import Connections
from ._health import Health
from ._limiter import RedisLimiter
from ._retry_budget import RedisRetryBudget, SharedRetryCounts
from ._shared_stats import RedisSharedStats
from ._workers import Heartbeat, LeaseKeeper, ReleaseListener


def _hash_tag(key: str) -> str:
    """A hash-tag-safe form of ``key``: braces would end the tag early, so those are hashed."""
    if "{" in key or "}" in key or len(key) > 200:
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return key


class RedisBackend(Backend, SharesStats, ReportsOutages, LearnsLimits):
    """State in a Redis server shared by every process that names the same URL.

    ``lease`` is how long a concurrency permit survives its holder's death (live holders
    renew it every third of it); ``socket_timeout`` bounds every call to Redis; ``fill_lease``
    bounds how long other processes wait for one process computing a cache entry;
    ``expected_processes`` is how many processes share the limits when Redis cannot count
    them (unreachable from the start), so each takes its share under the ``local`` policy.
    Each is checked here (see ``docs/configuration.md`` for the bounds), as are the URL and
    the key prefix, so a bad value fails at construction and never on a call.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str | None = None,
        lease: float = 10.0,
        socket_timeout: float | None = None,
        fill_lease: float = 60.0,
        expected_processes: int | None = None,
    ) -> None:
        check_redis_url(url, "url")
        settings = get_settings()
        # A value taken from the environment is named by its variable, so the fix is obvious.
        self.prefix = (
            _validate.key_prefix("GLM_GUARD_KEY_PREFIX", settings.key_prefix)
            if key_prefix is None
            else _validate.key_prefix("key_prefix", key_prefix)
        )
        timeout = cast(
            float,
            _validate.seconds("GLM_GUARD_REDIS_TIMEOUT", settings.redis_timeout, bounds=_validate.REDIS_TIMEOUT_RANGE)
            if socket_timeout is None
            else _validate.seconds("socket_timeout", socket_timeout, bounds=_validate.REDIS_TIMEOUT_RANGE),
        )
        self.lease = cast(float, _validate.seconds("lease", lease, bounds=_validate.LEASE_RANGE))
        self.fill_lease = cast(float, _validate.seconds("fill_lease", fill_lease, bounds=_validate.FILL_LEASE_RANGE))
        self._url = url
        self.expected_processes = (
            settings.expected_processes
            if expected_processes is None
            else cast(int, _validate.positive_int("expected_processes", expected_processes))
        )
        self.health = Health(url)
        self.connections = Connections(url, timeout, self.health)
        self._stats = RedisSharedStats(self.connections, self.prefix, self._fixed_limits_here)
        self._limiters: dict[str, RedisLimiter] = {}
        self._retry_counts: dict[str, SharedRetryCounts] = {}
        self._shares: dict[tuple[LimitPolicy, int, int | None], LimitPolicy] = {}
        self._start_workers()
        join(self)

    def __repr__(self) -> str:
        return f"<RedisBackend {mask_url(self._url)!r} prefix={self.prefix!r}>"

    def _start_workers(self, live_processes: int = 1) -> None:
        """This process's own lock and threads (each thread starts on first need).

        ``live_processes``: the count last seen, which a forked child keeps for its share.
        """
        self._lock = threading.Lock()
        self.leases = LeaseKeeper(self.connections, self.lease)
        self.listener = ReleaseListener(self.connections, self.prefix + "*:released")
        self.heartbeat = Heartbeat(self.connections, self.health, self.prefix + "processes", live_processes)

    def after_fork(self) -> None:
        """In a forked child: its own connections and threads, never its parent's sockets or locks."""
        self.connections.after_fork()
        self.health.after_fork()
        self._start_workers(self.heartbeat.live_processes)
        for limiter in self._limiters.values():
            limiter.after_fork()
        for counts in self._retry_counts.values():
            counts.after_fork()

    # -- the Backend interface ---------------------------------------------------------------

    def key(self, key: str, suffix: str) -> str:
        return f"{self.prefix}{{{_hash_tag(key)}}}:{suffix}"

    def limiter(self, key: str) -> RedisLimiter:
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = RedisLimiter(self, key)
            return limiter

    def retry_budget(self, key: str, policy: RetryBudgetPolicy) -> RedisRetryBudget:
        with self._lock:
            counts = self._retry_counts.get(key)
            if counts is None:
                counts = self._retry_counts[key] = SharedRetryCounts(self, key)
        return RedisRetryBudget(counts, policy)

    def cache(
        self, namespace: str, *, ttl: float | None, maxsize: int, serializer: str = "json", owner: str = ""
    ) -> RedisCacheStore:
        return RedisCacheStore(self, namespace, ttl, serializer, owner or namespace, maxsize)

    def share(self, policy: LimitPolicy, learned: int | None = None) -> LimitPolicy:
        """This process's share of ``policy`` without Redis: the limit over the processes sharing it.

        Those are the live processes last counted, and never fewer than ``expected_processes``:
        a process that never reached Redis has counted nobody, and must not take the whole limit.
        A learned limit is shared as it was last ``learned`` here (else its start), fixed until
        Redis is back.
        """
        processes = max(self.heartbeat.live_processes, self.expected_processes)
        concurrency = policy.concurrency
        if isinstance(concurrency, AutoConcurrency):
            concurrency = concurrency.start if learned is None else learned
        reserve, policy = policy.reserve, dataclasses.replace(policy, reserve=0)  # cached per policy, not per call
        cached = self._shares.get((policy, processes, concurrency))
        if cached is None:
            cached = LimitPolicy(
                None if policy.calls is None else max(1, policy.calls // processes),
                policy.period,
                None if concurrency is None else max(1, concurrency // processes),
                policy.on_backend_error,
                None if policy.tokens is None else max(1, policy.tokens // processes),
                burst=None if policy.burst is None else (max(1, policy.burst[0] // processes), policy.burst[1]),
            )
            self._shares[(policy, processes, concurrency)] = cached
        if cached.tokens is None:
            return cached
        return dataclasses.replace(cached, reserve=min(reserve, cached.tokens))  # a large call still fits a share

    def close(self) -> None:
        self.leases.stop()
        self.listener.stop()
        self.heartbeat.stop()
        self.connections.close()
        leave(self)

    # -- capabilities ------------------------------------------------------------------------

    def shared_stats(self) -> SharedStats:
        return self._stats

    def fixed_limits(self) -> dict[str, int]:
        """The fleet's, as the processes' stats flushes wrote them to Redis, with this process's own
        over them; while Redis is away, this process's alone."""
        found = self._fixed_limits_here()
        if not self.health.available():
            return found
        try:
            return {**self._stats.fixed_limits(), **found}
        except (BackendError, BackendRequestError):
            return found

    def _fixed_limits_here(self) -> dict[str, int]:
        with self._lock:
            limiters = list(self._limiters.values())
        return {limiter.key: limiter.fixed_limit for limiter in limiters if limiter.fixed_limit is not None}

    def learned_limits(self, keys: Iterable[str] = ()) -> dict[str, LearnedState]:
        """Read from Redis (one pipeline of ``HMGET`` commands), so the numbers are the fleet's, for this
        process's learned keys and ``keys``; while Redis is away, what it last told this process."""
        with self._lock:
            limiters = list(self._limiters.values())
        found = {limiter.key: state for limiter in limiters if (state := limiter.learned_state()) is not None}
        wanted = sorted({*keys, *found})
        if not wanted or not self.health.available():
            return found

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in wanted:
                pipe.hmget(self.key(key, "learned"), "limit", "epoch")
            return list(pipe.execute(raise_on_error=False))  # a planted key of another type spoils only itself

        try:
            replies = self.connections.call(read)
        except (BackendError, BackendRequestError):
            return found
        for key, reply in zip(wanted, replies, strict=True):
            state = stored_state(*reply) if isinstance(reply, list) and len(reply) == 2 else None
            if state is not None:
                found[key] = state
        return found

    def outage_report(self) -> dict[str, object]:
        return {
            "backend": mask_url(self._url),
            "available": self.health.available(),
            "outages": self.health.outages,
            "outage_calls": self.health.outage_calls,
            "refusals": self.health.refusals,
        }


def _redis_backends() -> list[RedisBackend]:
    return [backend for backend in live_backends() if isinstance(backend, RedisBackend)]


def _after_fork_in_child() -> None:
    for backend in _redis_backends():
        backend.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    """Close this process's connections before the interpreter tears sockets down itself."""
    for backend in _redis_backends():
        with contextlib.suppress(Exception):
            backend.close()
