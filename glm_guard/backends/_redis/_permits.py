"""What a Redis admission hands its caller: proof of admission, given back exactly once.

A lease in Redis; a call this process's share admitted while Redis was away; both at once
just after an outage; or nothing to give back (no concurrency limit, the ``open`` policy).
(The sync flavour of a share-only admission is the ``LocalLimiter`` itself.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, cast

from ..._auto_concurrency import AutoConcurrency
from .._base import AsyncPermit, Outcome, Permit, Spending
from .._local import LocalLimiter

if TYPE_CHECKING:
    from ._limiter import RedisLimiter
    from ._local_share import LocalShare


class Learning(NamedTuple):
    """A lease under a learned limit: the limit's bounds, the epoch the call was admitted in, and
    the calls running then, itself included (a cut goes no higher than the others among them)."""

    bounds: AutoConcurrency
    epoch: int
    running: int

    def lesson(self, outcome: Outcome | None) -> list[object] | None:
        """``learn.lua``'s arguments after the token and channel; ``None``: nothing to learn."""
        if outcome is None:
            return None
        code = "2" if outcome is Outcome.LIMITED else "1"
        bounds = self.bounds
        return [code, self.epoch, f"{bounds.min} {bounds.max} {bounds.start}", self.running]


@dataclass(slots=True)
class Lease:
    """A lease in Redis, given back exactly once (with what the answer teaches a learned limit)."""

    _limiter: RedisLimiter
    _token: bytes | None
    _learning: Learning | None = None

    def release(self, outcome: Outcome | None = None) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            self._limiter.give_back(token, None if self._learning is None else self._learning.lesson(outcome))


@dataclass(slots=True)
class AsyncLease(Lease):
    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        if self._token is not None:
            token, self._token = self._token, None
            lesson = None if self._learning is None else self._learning.lesson(outcome)
            await self._limiter.give_back_async(token, lesson)


@dataclass(slots=True)
class Unshared:
    """The permit of a call this process's share admitted while Redis was away (see ``_local_share``)."""

    _limiter: RedisLimiter
    _token: bytes | None

    def release(self, outcome: Outcome | None = None) -> None:  # nothing is learned without Redis
        if self._token is not None:
            token, self._token = self._token, None
            self._limiter.unshared_finished(token)


@dataclass(slots=True)
class AsyncUnshared(Unshared):
    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        if self._token is not None:
            token, self._token = self._token, None
            await self._limiter.unshared_finished_async(token)


@dataclass(slots=True)
class InGrace:
    """Admitted by Redis and by this process's share, just after an outage: both are given back."""

    _redis_permit: Permit | AsyncPermit
    _local_share: LocalShare
    _token: bytes | None
    _done: bool = False

    def _share_ended(self) -> bool:
        """Give the share's slot back, the first time only; whether this was the first time."""
        if self._done:
            return False
        self._done = True
        self._local_share.both_ended(self._token)
        return True

    def release(self, outcome: Outcome | None = None) -> None:
        if self._share_ended():
            cast(Permit, self._redis_permit).release(outcome)


@dataclass(slots=True)
class AsyncInGrace(InGrace):
    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        if self._share_ended():
            await cast(AsyncPermit, self._redis_permit).release(outcome)


@dataclass(slots=True)
class AsyncLocalOnly:
    """Admitted by this process's share alone (no concurrency limit: nothing Redis must learn)."""

    _local_share: LocalLimiter

    async def release(self, outcome: Outcome | None = None) -> None:
        self._local_share.release()


@dataclass(slots=True)
class Probing:
    """The permit of the call let through at the end of a pause: its success ends the pause."""

    _permit: Permit | AsyncPermit
    _limiter: RedisLimiter
    _since: int

    def release(self, outcome: Outcome | None = None) -> None:
        cast(Permit, self._permit).release(outcome)
        if outcome is Outcome.SUCCEEDED:
            self._limiter.end_pause(self._since)


@dataclass(slots=True)
class AsyncProbing(Probing):
    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        await cast(AsyncPermit, self._permit).release(outcome)
        if outcome is Outcome.SUCCEEDED:
            await self._limiter.end_pause_async(self._since)


class Spend(Spending):
    """A call's token reservation in Redis, settled when the call ends, with its lease (``lease``:
    held by this permit, not by ``inner``) given back in the same step; ``inner`` is released after."""

    __slots__ = ("_inner", "_lease", "_limiter", "_token")

    def __init__(self, limiter: RedisLimiter, token: bytes, lease: bool, inner: Permit | AsyncPermit) -> None:
        super().__init__()
        self._limiter = limiter
        self._token: bytes | None = token
        self._lease = lease
        self._inner = inner

    def _unsettled(self) -> bytes | None:
        """The reservation's token, the first time only: it is settled once."""
        token, self._token = self._token, None
        return token

    def release(self, outcome: Outcome | None = None) -> None:
        token = self._unsettled()
        if token is not None:
            self._limiter.settle(token, self._lease, self.used, self.provider_left)
        cast(Permit, self._inner).release(outcome)


class AsyncSpend(Spend):
    __slots__ = ()

    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        token = self._unsettled()
        if token is not None:
            await self._limiter.settle_async(token, self._lease, self.used, self.provider_left)
        await cast(AsyncPermit, self._inner).release(outcome)


class _NoLease:
    """The permit of an admission that holds no lease (no concurrency limit, or the ``open`` policy)."""

    def release(self, outcome: Outcome | None = None) -> None:
        return None


class _AsyncNoLease:
    async def release(self, outcome: Outcome | None = None) -> None:
        return None


NO_LEASE = _NoLease()
NO_LEASE_ASYNC = _AsyncNoLease()
