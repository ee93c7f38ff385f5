"""What the admission core asks its driver to do, and the loop that feeds it the outcomes.

The decisions of an admission (``SharedAdmission.admission``, and the limiter's outage
policy around it) are one generator without I/O:
it yields a step, and a sync or an async driver carries it out its own way and sends back
the outcome, or throws in the failure.  So the two flavours share every decision and differ
only in how they wait.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Generic, NamedTuple, TypeVar

from .._base import LimitPolicy

T = TypeVar("T")


class Ask(NamedTuple):
    """Run a script; the driver sends back its reply.

    The driver first takes one of the key's few places for talking to Redis (``Gate``): a
    caller queued there is waiting for its neighbours' round trips, not for the limit, so
    ``max_wait`` does not bound it; if Redis went away meanwhile it gives up at once.
    """

    script: str
    keys: list[str]
    args: list[Any]


class Sleep(NamedTuple):
    seconds: float


class AwaitRelease(NamedTuple):
    """Sleep until some process gives a slot back, or ``seconds`` at most."""

    seconds: float


class QueueForSlot(NamedTuple):
    """Queue behind this process's earlier callers refused for want of a slot, ``max_wait`` at most.

    Only the queue's head asks Redis again, so many waiting callers cost Redis what one
    does, and a newcomer never overtakes them.  The driver sends back ``(leave, waited)``:
    how to leave the queue, and whether others were ahead; with ``if_busy`` it joins only
    behind others, and sends back ``(None, False)`` when there were none.  It throws in
    ``TimeoutError`` when ``max_wait`` passes first.
    """

    max_wait: float | None
    if_busy: bool = False


class TakeShare(NamedTuple):
    """Be admitted by this process's local share of the limits (``policy``), ``max_wait`` at most."""

    policy: LimitPolicy
    max_wait: float | None


Step = Ask | Sleep | AwaitRelease | QueueForSlot | TakeShare


class Steps(Generic[T]):
    """Feeds each step's outcome, or its failure, back into the core; ``next()`` is ``None`` at the
    end, and then ``result`` is what the core returned."""

    def __init__(self, core: Generator[Step, Any, T]) -> None:
        self._core = core
        self.outcome: Any = None
        self.failure: BaseException | None = None
        self.result: T

    def next(self) -> Step | None:
        failure, self.failure = self.failure, None
        try:
            return self._core.send(self.outcome) if failure is None else self._core.throw(failure)
        except StopIteration as done:
            self.result = done.value
            return None
