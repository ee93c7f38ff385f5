"""Places this process's callers of one key take in turn: asking Redis, and waiting for a slot.

A thousand tasks of one process that want the same key should cost Redis what one does, need
no more than one connection, and be served in the order they came.  So one asks at a time
and the rest queue here, and of the callers refused for want of a slot, only the first polls
for one.  Threads share one semaphore; each event loop has its own, since an asyncio
primitive belongs to one loop, and a task whose loop was closed under it must never keep a
place a thread or another loop needs.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Final

#: How many of a process's callers of one key may be talking to Redis at once (threads
#: and each event loop apart).  One keeps their requests, so their reserved starts, in
#: arrival order; a queued caller waits only for the round trips ahead of it.
ASKERS_PER_KEY: Final = 1


class Gate:
    """At most ``size`` holders at a time: threads together (``with gate.threads``), each event loop on its own."""

    def __init__(self, size: int) -> None:
        self._size = size
        self.after_fork()

    def after_fork(self) -> None:
        """Fresh semaphores: one a parent's thread held at the fork would never open in the child."""
        self.threads = threading.BoundedSemaphore(self._size)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def try_enter(self) -> Callable[[], None] | None:
        """A place if one is free now (returns how to leave it), else ``None``: never waits."""
        return self.threads.release if self.threads.acquire(blocking=False) else None

    def enter(self, max_wait: float | None) -> Callable[[], None]:
        """Wait for a place, ``max_wait`` seconds at most (else ``TimeoutError``); returns how to leave it."""
        if not self.threads.acquire(timeout=max_wait):
            raise TimeoutError
        return self.threads.release

    async def try_enter_async(self) -> Callable[[], None] | None:
        semaphore = self.for_running_loop()
        if semaphore.locked():
            return None
        await semaphore.acquire()  # free: taken without suspending
        return semaphore.release

    async def enter_async(self, max_wait: float | None) -> Callable[[], None]:
        semaphore = self.for_running_loop()
        async with asyncio.timeout(max_wait):
            await semaphore.acquire()
        return semaphore.release

    def for_running_loop(self) -> asyncio.Semaphore:
        """The running loop's semaphore (``async with`` it to hold a place without a timeout)."""
        loop = asyncio.get_running_loop()
        semaphore = self._loops.get(loop)
        if semaphore is None:
            semaphore = self._loops.setdefault(loop, asyncio.Semaphore(self._size))
        return semaphore
