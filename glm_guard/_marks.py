"""Per-call marks that decorators leave for one another through ``contextvars``.

A fallback answer must not be cached, whichever order the decorators are stacked in, and
must not change type to say so.  So ``fallback`` marks the current context as degraded and
``cached_response`` reads the mark after the inner call returns.  Awaiting a coroutine runs
it in the caller's context, so the mark crosses ``await`` as well as plain calls.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Final

DEGRADED: ContextVar[bool] = ContextVar("glm_guard_degraded", default=False)


class Retrying:
    """Set while a ``retry_on_1302`` owns a call's attempts; ``active`` ends with that call.

    A task spawned inside the call copies the context and so this object; once the outer call
    has returned, ``active`` is false and retries nested in that task work normally again.
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


RETRYING: ContextVar[Retrying | None] = ContextVar("glm_guard_retrying", default=None)

# A context mark does not travel back out of a child task or thread (``asyncio.wait_for``,
# ``gather``, ``to_thread``), so fallback answers are also remembered by identity for a while:
# a cache that receives the very object a fallback produced will not store it.
_RECENT: dict[int, tuple[object, float]] = {}
_RECENT_SIZE: Final = 4096
_RECENT_SECONDS: Final = 300.0


def begin_call() -> None:
    """Start observing a fresh inner call: nothing below has been degraded yet."""
    if DEGRADED.get():  # setting a context variable copies the context: skip a no-op set
        DEGRADED.set(False)


def mark_degraded(answer: object = None, *, remember: bool = False) -> None:
    DEGRADED.set(True)
    if remember:
        if len(_RECENT) >= _RECENT_SIZE:
            _RECENT.pop(next(iter(_RECENT)), None)
        _RECENT[id(answer)] = (answer, time.monotonic() + _RECENT_SECONDS)


def result_degraded(value: object) -> bool:
    """Whether ``value`` came from a fallback, seen through the context or by identity."""
    if DEGRADED.get():
        return True
    entry = _RECENT.get(id(value))
    return entry is not None and entry[0] is value and entry[1] > time.monotonic()


def is_degraded() -> bool:
    """Whether the last guarded result returned in this context came from a fallback."""
    return DEGRADED.get()
