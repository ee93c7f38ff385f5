"""Per-call context that guards leave for one another through ``contextvars``.

A fallback answer must not be cached, whichever order the decorators are stacked in, and
must not change type to say so.  Two marks carry that:

- ``DEGRADED``, a context variable: the last guarded call in this context was answered by a
  fallback (what :func:`is_degraded` reports);
- a :class:`CacheScope` that ``cached_response`` opens around the body it runs.  The scope is
  a mutable object, so a child task or thread (``asyncio.gather``, ``wait_for``,
  ``to_thread``), which copies the context and so the reference, marks the very scope the
  cache reads.  A context variable set in the child would not travel back.

``RETRYING`` lets an inner ``retry_on_1302`` see that an outer one owns the attempts.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

__all__ = ["DEGRADED", "RETRYING", "CacheScope", "begin_call", "is_degraded", "mark_degraded", "open_scope"]

DEGRADED: ContextVar[bool] = ContextVar("glm_guard_degraded", default=False)


class CacheScope:
    """One body run under a cache: did a fallback answer anywhere inside it?"""

    __slots__ = ("degraded", "parent")

    def __init__(self, parent: CacheScope | None) -> None:
        self.parent = parent
        self.degraded = False


CACHE_SCOPE: ContextVar[CacheScope | None] = ContextVar("glm_guard_cache_scope", default=None)


def open_scope() -> tuple[CacheScope, Token[CacheScope | None]]:
    """A new scope inside the current one, and the token that closes it (``CACHE_SCOPE.reset``)."""
    scope = CacheScope(CACHE_SCOPE.get())
    return scope, CACHE_SCOPE.set(scope)


def begin_call() -> None:
    """Start observing a fresh call: nothing below has been degraded yet."""
    if DEGRADED.get():  # setting a context variable copies the context: skip a no-op set
        DEGRADED.set(False)


def mark_degraded() -> None:
    """A fallback answered: tell this context, and every cache scope the answer passes through."""
    DEGRADED.set(True)
    scope = CACHE_SCOPE.get()
    while scope is not None and not scope.degraded:
        scope.degraded = True
        scope = scope.parent


def is_degraded() -> bool:
    """Whether the last guarded result returned in this context came from a fallback."""
    return DEGRADED.get()


class Retrying:
    """Set while a ``retry_on_1302`` owns a call's attempts; ``active`` ends with that call.

    A task spawned inside the call copies the context and so this object; once the outer call
    has returned, ``active`` is false and retries nested in that task work normally again.
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


RETRYING: ContextVar[Retrying | None] = ContextVar("glm_guard_retrying", default=None)
