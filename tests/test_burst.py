"""``rate_limited(burst=(n, seconds))``: a cap per sub-window beside the window, on every backend."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from glm_guard import ConfigurationError, rate_limited
from glm_guard.backends._base import Backend

from .helpers import THREAD_WAKE_SLACK, max_in_window


def test_threads_keep_the_sub_window_cap(backend: Backend) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    @rate_limited(100, 60, burst=(3, 1.0), backend=backend)
    def call() -> None:
        with lock:
            starts.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(starts) == 9
    assert max_in_window(starts, 1.0, slack=THREAD_WAKE_SLACK) <= 3
    assert max_in_window(starts, 60) == 9  # the minute's budget itself was never the limit


def test_pacing_spreads_tasks_evenly(backend: Backend) -> None:
    starts: list[float] = []

    @rate_limited(10, 1.0, burst=(1, 0.1), backend=backend)
    async def call() -> None:
        starts.append(time.monotonic())

    async def run() -> None:
        await asyncio.gather(*(call() for _ in range(8)))

    asyncio.run(asyncio.wait_for(run(), 10))
    assert len(starts) == 8
    assert max_in_window(starts, 0.1) <= 1  # one start per 100 ms, not a burst of 8


def test_burst_alone_caps_sub_windows(backend: Backend) -> None:
    starts: list[float] = []

    @rate_limited(burst=(2, 0.2), backend=backend)
    def call() -> None:
        starts.append(time.monotonic())

    for _ in range(6):
        call()
    assert max_in_window(starts, 0.2) <= 2


def test_burst_is_checked_when_decorating() -> None:
    for bad in [(0, 1.0), (2, 0), (2,), "10/s", (True, 1.0)]:
        with pytest.raises(ConfigurationError, match="burst"):
            rate_limited(burst=bad)  # type: ignore[arg-type]


@pytest.mark.redis
def test_four_processes_share_one_burst_cap_redis(redis_url: str) -> None:
    from .test_redis import result, worker

    processes = [
        worker("rate", url=redis_url, key="mp-burst", calls=40, period=2.0, burst=[4, 0.25], tasks=6, seconds=2.5)
        for _ in range(4)
    ]
    starts = sorted(s for p in processes for s in result(p)["starts"])
    assert max_in_window(starts, 0.25) <= 4
    assert max_in_window(starts, 2.0) <= 40
    assert len(starts) >= 20
