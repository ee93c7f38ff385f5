"""Counting helpers for timing tests: events are counted in windows, with slack."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

# A thread granted along with others runs when the OS schedules it: on a busy two-core CI host
# one was seen to record its start 30+ ms after its grant. Tests that record starts in many
# threads use this slack, with periods long enough that it stays a small share of the window.
THREAD_WAKE_SLACK = 0.1


def max_in_window(starts: Sequence[float], period: float, slack: float = 0.03) -> int:
    """The most start times found in any window of ``period - slack`` seconds.

    The slack absorbs scheduling delay between admission and the moment a test records the
    start; it only ever makes the check more lenient by ``slack`` seconds, never by a call.
    """
    ordered = sorted(starts)
    width = period - slack
    best = 0
    low = 0
    for high, start in enumerate(ordered):
        while ordered[low] <= start - width:
            low += 1
        best = max(best, high - low + 1)
    return best


class ErrorWithText(Exception):
    """An exception that only carries the provider's text, like a home-made wrapper's."""


SEED_1302 = '429 {"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}'
SEED_1113 = '429 {"error":{"code":"1113","message":"您的账户已欠费，请充值后重试"}}'


def window_margin(backend_name: str, period: float) -> float:
    """How much longer than ``period`` a backend keeps a window (docs/distributed.md).

    Redis decides starts on its own clock and the caller starts after the reply, so its
    windows are 2 % longer, by at most 20 ms; the local backend decides where the call runs.
    """
    return min(0.02 * period, 0.02) if backend_name == "redis" else 0.0


def eventually(condition: Callable[[], bool], within: float) -> bool:
    """Whether ``condition()`` holds at some moment in the next ``within`` seconds (polled)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def in_threads_at_once(call: Callable[[], object], count: int, within: float = 10.0) -> None:
    """Run ``call()`` in ``count`` threads released together, and wait up to ``within`` for each."""
    ready = threading.Barrier(count)

    def arrive_together() -> None:
        ready.wait(5)
        call()

    threads = [threading.Thread(target=arrive_together) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(within)


def admitted_at_once(call: Callable[[], object], most: int) -> int:
    """How many calls of ``call()`` (guarded with ``max_wait=0``) are admitted in a row before one
    is refused with ``RateLimitTimeout``, ``most`` at most."""
    from glm_guard import RateLimitTimeout

    for admitted in range(most):
        try:
            call()
        except RateLimitTimeout:
            return admitted
    return most
