"""Per-call marks that decorators leave for one another through ``contextvars``.

A fallback answer must not be cached, whichever order the decorators are stacked in, and
must not change type to say so.  So ``fallback`` marks the current context as degraded and
``cached_response`` reads the mark after the inner call returns.  Awaiting a coroutine runs
it in the caller's context, so the mark crosses ``await`` as well as plain calls.
"""

from __future__ import annotations

from contextvars import ContextVar

_DEGRADED: ContextVar[bool] = ContextVar("glm_guard_degraded", default=False)
RETRYING: ContextVar[bool] = ContextVar("glm_guard_retrying", default=False)


def begin_call() -> None:
    """Start observing a fresh inner call: nothing below has been degraded yet."""
    _DEGRADED.set(False)


def mark_degraded() -> None:
    _DEGRADED.set(True)


def is_degraded() -> bool:
    """Whether the last guarded result returned in this context came from a fallback."""
    return _DEGRADED.get()
