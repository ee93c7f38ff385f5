"""A small port of Netflix concurrency-limits' ``AIMDLimit``, gated per process.

The common approach to an adaptive client limit, and the one glm_guard's ``auto`` is compared
with: each process learns alone.  Ported from ``AIMDLimit._update`` and ``SimpleLimiter``:

- on a drop (or an RTT above the timeout): ``limit = max(min, floor(limit * 0.9))``;
- on a success, if ``inflight * 2 >= limit`` (``inflight`` as counted when the call was
  admitted): ``limit += 1``, up to ``max``.

The gate is an ``asyncio.Condition``: a caller waits while ``inflight >= limit``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class AIMDLimit:
    """Netflix's ``AIMDLimit``: additive increase, multiplicative decrease on a drop."""

    def __init__(self, *, initial: int, min_limit: int, max_limit: int, backoff: float = 0.9, timeout: float = 5.0):
        if not 0.5 <= backoff < 1.0:
            raise ValueError("backoff must be in [0.5, 1.0)")  # as in the original
        self.limit = initial
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff = backoff
        self.timeout = timeout

    def update(self, rtt: float, inflight: int, did_drop: bool) -> None:
        limit = self.limit
        if did_drop or rtt > self.timeout:
            limit = math.floor(limit * self.backoff)
        elif inflight * 2 >= limit:
            limit += 1
        self.limit = min(self.max_limit, max(self.min_limit, limit))


class AIMDGate:
    """One process's limiter: admits while ``inflight < limit``, feeds each answer back."""

    def __init__(self, limit: AIMDLimit, is_drop: Callable[[BaseException], bool]) -> None:
        self.limit = limit
        self.inflight = 0
        self._is_drop = is_drop
        self._changed = asyncio.Condition()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with self._changed:
            await self._changed.wait_for(lambda: self.inflight < self.limit.limit)
            self.inflight += 1
            inflight = self.inflight
        began = time.monotonic()
        dropped = False
        try:
            return await fn()
        except BaseException as error:
            dropped = self._is_drop(error)
            raise
        finally:
            async with self._changed:
                self.inflight -= 1
                self.limit.update(time.monotonic() - began, inflight, dropped)
                self._changed.notify_all()
