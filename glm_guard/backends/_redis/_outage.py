"""One key's limits while Redis is away, and for a grace time after: this process's share of them.

While Redis is away, the ``local`` policy admits calls against this process's share of each
limit (the limit divided by the processes last counted, or by ``expected_processes`` when
Redis was never reached).  When Redis answers again two things are missing from its view:
the calls this process let run meanwhile, and the starts other processes still make from
their own shares until their next probe (one health backoff at most).  So, for ``local``:

- the calls still running that were admitted without Redis are *adopted*: written to Redis
  as leases before the next shared admission, renewed and given back like any other, and
  the leases this process held from before are written again (a restarted Redis lost them);
- for one period plus the longest backoff after this process saw Redis again, an admission
  must pass both its local share and Redis.

Every window that can hold a start made without Redis then lies in some process's grace
time, where each keeps to its share; every later window holds only starts Redis counted.
"""

from __future__ import annotations

import threading
import time

from .._local import LocalLimiter
from ._health import LONGEST_BACKOFF_SECONDS  # others may serve from their shares this long after


class LocalShare:
    """The local half of a Redis limiter: its share of the limits, and the calls it let run without Redis."""

    def __init__(self, key: str) -> None:
        self.limiter = LocalLimiter(key)
        self._lock = threading.Lock()
        self._running: set[bytes] = set()  # admitted without Redis, still running, unknown to Redis
        self._adopted: set[bytes] = set()  # admitted without Redis, now holding a lease in Redis
        self._served_without_redis = False
        self._must_adopt = False  # served calls since the last adoption
        self._back_at = float("-inf")  # when Redis answered again after this share served calls

    def after_fork(self) -> None:
        self.limiter._after_fork()
        self._lock = threading.Lock()
        self._running.clear()
        self._adopted.clear()

    def serving_without_redis(self, period: float, *, after_shared: bool) -> None:
        """Before each admission this share makes: the first after a switch waits out one period.

        After admissions through Redis (``after_shared``), the shared window this process
        cannot see may hold the whole limit, so the share starts as if it did: paused for one
        ``period``, which is what holding the limit across the switch costs.  A process that
        never reached Redis (down at start) starts at once.  In the grace time every
        admission passed this share already, so a switch back within it needs no pause.
        """
        if not self._served_without_redis:
            with self._lock:
                if not self._served_without_redis:
                    if after_shared and not self._in_grace_after(period):
                        self.limiter.cooldown(period)
                    self._served_without_redis = True

    def served(self, token: bytes) -> None:
        """A call admitted by this share (Redis away) is now running as ``token``."""
        with self._lock:
            self._running.add(token)
            self._must_adopt = True

    def finished(self, token: bytes) -> bool:
        """The call of ``token`` ended; returns whether Redis holds a lease for it to give back."""
        with self._lock:
            self._running.discard(token)
            if token in self._adopted:
                self._adopted.discard(token)
                return True
            return False

    def must_adopt(self) -> bool:
        """Whether this share served calls since Redis last took its running calls over."""
        return self._must_adopt

    def to_adopt(self) -> list[bytes]:
        """The running calls Redis does not know about yet."""
        with self._lock:
            return list(self._running)

    def adopted(self, tokens: list[bytes]) -> list[bytes]:
        """Redis now holds leases for ``tokens``; returns those whose calls ended meanwhile."""
        with self._lock:
            self._must_adopt = False
            ended = [token for token in tokens if token not in self._running]
            for token in tokens:
                if token in self._running:
                    self._running.discard(token)
                    self._adopted.add(token)
            return ended

    def redis_answered(self) -> None:
        """A shared admission succeeded: if this share served calls before, the grace time starts now."""
        if self._served_without_redis:
            with self._lock:
                if self._served_without_redis:
                    self._served_without_redis = False
                    self._back_at = time.monotonic()

    def in_grace(self, period: float) -> bool:
        """Whether admissions must still pass this share as well as Redis: from its first call
        served without Redis until one period plus the longest backoff after Redis answered again."""
        return self._served_without_redis or self._in_grace_after(period)

    def _in_grace_after(self, period: float) -> bool:
        return time.monotonic() < self._back_at + LONGEST_BACKOFF_SECONDS + period
