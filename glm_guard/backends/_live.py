"""The backends alive in this process, for monitoring to list without looking modules up by name."""

from __future__ import annotations

import weakref

from ._base import Backend

#: Held weakly: a backend nobody uses any more drops out by itself.
LIVE: weakref.WeakSet[Backend] = weakref.WeakSet()


def join(backend: Backend) -> None:
    LIVE.add(backend)


def leave(backend: Backend) -> None:
    """A closed backend is no longer live."""
    LIVE.discard(backend)


def live_backends() -> list[Backend]:
    """Every backend of this process that joined and is neither closed nor collected."""
    return list(LIVE)
