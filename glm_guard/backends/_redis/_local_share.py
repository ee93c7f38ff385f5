"""One key's limits while Redis is away, and for a grace time after: this process's share of them.

(Whether Redis answers is ``_health``'s; this module is what a limiter does about it.)

While Redis is away, the ``local`` policy admits calls against this process's share of each
limit (the limit divided by the processes last counted, or by ``expected_processes`` when
Redis was never reached).  When Redis answers again two things are missing from its view:
the calls this process let run meanwhile, and the starts other processes still make from
their own shares until their next probe (one health backoff at most).  So, for ``local``:

- what it did meanwhile is *adopted* before its next shared admission: the calls still
  running are written to Redis as leases (renewed and given back like any other), the leases
  this process held from before are written again (a restarted Redis lost them), and its
  starts and token reservations of the last period join the shared window and budget;
- for one period plus the longest backoff after this process saw Redis again, an admission
  must pass both its local share and Redis.

A start made without Redis reaches the shared window with its process's next admission;
until every process has come back, each keeps to its share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .._base import LimitPolicy
from .._local import LocalLimiter
from ._health import LONGEST_BACKOFF_SECONDS  # others may serve from their shares this long after


class Adoption(NamedTuple):
    """What Redis takes over from a share: its running calls' tokens, the ages (seconds) of its
    starts of the last period, and ``(age, tokens)`` of its token reservations not yet written back."""

    running: list[bytes]
    starts: list[float]
    reserved: list[tuple[float, int]]


class LocalShare:
    """The local half of a Redis limiter: its share of the limits, and the calls it let run without Redis."""

    def __init__(self, key: str) -> None:
        self.limiter = LocalLimiter(key)
        self.after_fork()

    def after_fork(self) -> None:
        """A forked child starts with its own lock and none of its parent's calls."""
        self.limiter._after_fork()
        self._lock = threading.Lock()
        self._running: set[bytes] = set()  # admitted without Redis, still running, unknown to Redis
        self._sent: set[bytes] = set()  # admitted without Redis, sent to Redis (perhaps taken)
        self._counted: set[bytes] = set()  # Redis leases this share counts as its own calls in flight
        self._both: set[bytes] = set()  # Redis leases of calls the share admitted too (grace time)
        self._served_without_redis = False
        self.must_adopt = False  # admitted calls since Redis last took them over (read without the lock)
        self._back_at = float("-inf")  # when Redis answered again after this share served calls
        self._tokens_until = float("-inf")  # token reservations up to here (the share's clock) were adopted
        self._tokens_before = self._tokens_until  # as it was before the adoption under way

    # -- into an outage ------------------------------------------------------------------------

    def serving_without_redis(self, policy: LimitPolicy, *, after_shared: bool, held: list[bytes]) -> None:
        """Before each admission this share makes; the first after a switch prepares the share.

        After admissions through Redis (``after_shared``), the shared window this process
        cannot see may hold the whole limit, so the share starts as if it did: paused for one
        ``period`` (when it limits calls per period), which is what holding the limit across
        the switch costs; and the calls
        this process still runs on Redis leases (``held``) count against its share until they
        end (those of other processes cannot be seen).  A process that never reached Redis
        (down at start) starts at once.  In the grace time every admission passed this share
        already, so a switch back within it needs neither.
        """
        self.must_adopt = True  # its start (or call) is one Redis must take over
        if self._served_without_redis:
            return
        with self._lock:
            switching, self._served_without_redis = not self._served_without_redis, True
            if switching and after_shared and not self._in_grace_after(policy.period):
                if policy.calls is not None:
                    self.limiter.cooldown(policy.period)
                # Calls the share admitted itself already hold a slot in it: counted once.
                fresh = [t for t in held if t not in self._counted and t not in self._sent and t not in self._both]
                self._counted.update(fresh)
                self.limiter.count_in_flight(len(fresh))

    def lease_ended(self, token: bytes) -> None:
        """A Redis lease of this process ended, by whatever path: given back, settled, or dropped
        by an admission that failed or gave its start back.  If this share counted it, its slot
        in the share is free again (a count never ended would keep the slot taken for good)."""
        if token not in self._counted:
            return
        with self._lock:
            if token not in self._counted:
                return
            self._counted.discard(token)
        self.limiter.release()

    def both_admitted(self, token: bytes | None) -> None:
        """A call admitted by Redis and by this share (grace time) runs with the lease ``token``."""
        if token is not None:
            with self._lock:
                self._both.add(token)

    def both_ended(self, token: bytes | None) -> None:
        """That call ended: its slot in the share is free (its lease is given back by its holder)."""
        if token is not None:
            with self._lock:
                self._both.discard(token)
        self.limiter.release()

    def served(self, token: bytes) -> None:
        """A call admitted by this share (Redis away) is now running as ``token``."""
        with self._lock:
            self._running.add(token)
            self.must_adopt = True

    def finished(self, token: bytes) -> bool:
        """The call of ``token`` ended; returns whether Redis may hold a lease for it to give back."""
        with self._lock:
            self._running.discard(token)
            if token in self._sent:
                self._sent.discard(token)
                return True
            return False

    # -- out of an outage ----------------------------------------------------------------------

    def take_adoption(self, period: float) -> Adoption | None:
        """What Redis must take over before the next shared admission, once: the running calls,
        how long ago each start of the last ``period`` was, and the token reservations made in
        it since the last adoption (their ages and sizes); ``None`` when nothing is due.

        The calls count as sent from now on, so a call that ends gives its lease back whatever
        becomes of the request; if it fails, ``adoption_failed`` makes them due again.
        """
        with self._lock:
            if not self.must_adopt:
                return None
            self.must_adopt = False
            running = list(self._running)
            self._running.clear()
            self._sent.update(running)
            self._tokens_before = self._tokens_until
            now, starts, reserved = self.limiter.recent(period, self._tokens_until)
            self._tokens_until = now  # a reservation is written back once, by the adoption that saw it
        return Adoption(running, starts, reserved)

    def adoption_failed(self, tokens: list[bytes]) -> None:
        with self._lock:
            self._running.update(token for token in tokens if token in self._sent)
            self._tokens_until = self._tokens_before
            self.must_adopt = True

    def adopted(self, tokens: list[bytes], renew: Callable[[bytes], None]) -> None:
        """Redis took ``tokens`` over: ``renew`` those whose calls still run (under the lock, so
        a call ending meanwhile is either renewed and then given back, or neither)."""
        with self._lock:
            for token in tokens:
                if token in self._sent and token not in self._running:
                    renew(token)

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
