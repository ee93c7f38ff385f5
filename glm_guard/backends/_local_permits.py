"""The permits a local limiter hands out when a call needs more than the limiter itself.

A call under a fixed limit gets the limiter as its permit.  Under a learned limit the permit
remembers where the call was admitted (epoch, calls running); the call let through at the end of a pause
carries the pause it probes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from ._base import AsyncPermit, Outcome, Permit, Spending

if TYPE_CHECKING:
    from ._learned import Admission
    from ._local import LocalLimiter

__all__ = ["AsyncLearning", "AsyncProbe", "AsyncRelease", "AsyncSpend", "Learning", "Probe", "Spend"]


class AsyncRelease:
    """The async permit of a local limiter: releasing never waits, so it just forwards."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: LocalLimiter) -> None:
        self._limiter = limiter

    async def release(self, outcome: Outcome | None = None) -> None:
        self._limiter.release()


class Learning:
    """The permit of a call under a learned limit: it remembers where it was admitted (the epoch,
    so its answer teaches the limit only if it still speaks of the current one; the calls
    running then, which bound a cut)."""

    __slots__ = ("_admission", "_limiter", "_released")

    def __init__(self, limiter: LocalLimiter, admission: Admission) -> None:
        self._limiter = limiter
        self._admission = admission
        self._released = False

    def release(self, outcome: Outcome | None = None) -> None:
        if not self._released:
            self._released = True
            self._limiter.finished(self._admission, outcome)


class AsyncLearning(Learning):
    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        Learning.release(self, outcome)


class Probe:
    """The permit of the call let through at the end of a pause: its success ends the pause."""

    __slots__ = ("_limiter", "_permit", "_since")

    def __init__(self, limiter: LocalLimiter, permit: Permit | AsyncPermit, since: float) -> None:
        self._limiter = limiter
        self._permit = permit
        self._since = since

    def _probed(self, outcome: Outcome | None) -> None:
        if outcome is Outcome.SUCCEEDED:
            self._limiter.end_pause(self._since)

    def release(self, outcome: Outcome | None = None) -> None:
        cast(Permit, self._permit).release(outcome)
        self._probed(outcome)


class AsyncProbe(Probe):
    __slots__ = ()

    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        await cast(AsyncPermit, self._permit).release(outcome)
        self._probed(outcome)


class Spend(Spending):
    """The permit of a call that reserved tokens: on release its reservation is settled first
    (so a waiter it frees sees the tokens), then the permit it wraps is released."""

    __slots__ = ("_limiter", "_permit", "_spent")

    def __init__(self, limiter: LocalLimiter, permit: Permit | AsyncPermit, spent: list[float]) -> None:
        super().__init__()
        self._limiter = limiter
        self._permit = permit
        self._spent: list[float] | None = spent

    def _settle(self) -> None:
        spent, self._spent = self._spent, None
        if spent is not None and (self.used is not None or self.provider_left is not None):
            self._limiter.settle(spent, self.used, self.provider_left)

    def release(self, outcome: Outcome | None = None) -> None:
        self._settle()
        cast(Permit, self._permit).release(outcome)


class AsyncSpend(Spend):
    __slots__ = ()

    async def release(self, outcome: Outcome | None = None) -> None:  # type: ignore[override]
        self._settle()
        await cast(AsyncPermit, self._permit).release(outcome)
