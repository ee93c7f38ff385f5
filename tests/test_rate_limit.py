"""``@rate_limited``: window guarantee, concurrency, waiting, cooldown, on every backend.

Tests that take ``backend`` run on the local backend and on a real Redis; the few that read
the local backend's own state, or explain its design, take ``local_backend``.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import Counter

import pytest

import glm_guard
from glm_guard import ConfigurationError, RateLimitTimeout, rate_limited
from glm_guard.backends._base import Backend
from glm_guard.backends._local import LocalBackend

from .conftest import LimiterState
from .helpers import SEED_1302, THREAD_WAKE_SLACK, ErrorWithText, in_threads_at_once, max_in_window, window_margin


def test_threads_never_exceed_calls_in_any_window(backend: Backend) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    @rate_limited(5, 1.0, backend=backend)
    def call() -> None:
        with lock:
            starts.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(starts) == 15
    assert max_in_window(starts, 1.0, slack=THREAD_WAKE_SLACK) <= 5
    # A burst of 5 when the budget is free: no needless spacing.
    assert max_in_window(starts[:5], 0.05, slack=0) == 5


async def test_tasks_never_exceed_calls_in_any_window(backend: Backend) -> None:
    starts: list[float] = []

    @rate_limited(4, 0.3, backend=backend)
    async def call(i: int) -> int:
        starts.append(time.monotonic())
        return i

    results = await asyncio.gather(*(call(i) for i in range(16)))
    assert results == list(range(16))
    assert max_in_window(starts, 0.3) <= 4


async def open_connections(backend: Backend, count: int) -> None:
    """Have ``count`` connections open before a test that times its callers.

    Opening a Redis connection can take longer than a window on a busy CI host; a caller
    that finds one free overtakes callers still connecting, which says nothing of the limiter.
    """

    @rate_limited(1000, 0.25, key="open-connections", backend=backend)
    async def touch() -> None:
        return None

    await asyncio.gather(*(touch() for _ in range(count)))


def open_connections_from_threads(backend: Backend, count: int) -> None:
    """The same for the blocking client, whose pool threads draw from."""

    @rate_limited(1000, 0.25, key="open-connections", backend=backend)
    def touch() -> None:
        return None

    in_threads_at_once(touch, count)


async def test_saturated_limiter_admits_close_to_the_full_rate(backend: Backend) -> None:
    """30 calls at 10 per second use three full windows: 10 at once, 10 at 1 s, 10 at 2 s.

    Offsets count from the first start recorded, once the connections are open; a window's
    starts are counted from 0.1 s before its boundary to 0.4 s after.  Every start lies in
    one of those bands: none is spaced out for nothing.  On Redis a caller that may start
    more than 10 ms after its reserved start gives it back and takes the next free window
    (the documented price of never crowding a window), so a host too busy to answer or wake
    it in time leaves windows part-used: beside two CPU hogs, some runs used up to six.
    There only the first window must be full; quiet-host goodput on Redis is the
    benchmarks' to show (docs/benchmarks/accuracy.md).
    """
    starts: list[float] = []

    @rate_limited(10, 1.0, backend=backend)
    async def call() -> None:
        starts.append(time.monotonic())

    await open_connections(backend, 30)
    await asyncio.gather(*(call() for _ in range(30)))
    first = min(starts)
    bands = [divmod(start - first + 0.1, 1.0) for start in starts]
    assert all(into < 0.5 for _, into in bands), sorted(start - first for start in starts)
    windows = Counter(int(window) for window, _ in bands)
    if backend.name == "local":
        assert windows == {0: 10, 1: 10, 2: 10}
    else:
        assert windows[0] == 10 and max(windows.values()) <= 10


async def test_aiolimiter_bucket_double_bursts_where_the_window_does_not(local_backend: LocalBackend) -> None:
    """Why the local backend does not use ``AsyncLimiter(calls, period)`` as the limit."""
    from aiolimiter import AsyncLimiter

    bucket = AsyncLimiter(5, 0.5)
    bucket_starts: list[float] = []

    async def through_bucket() -> None:
        async with bucket:
            bucket_starts.append(time.monotonic())

    await asyncio.gather(*(through_bucket() for _ in range(10)))
    assert max_in_window(bucket_starts, 0.5) > 5  # a full bucket, then the drip

    window_starts: list[float] = []

    @rate_limited(5, 0.5, backend=local_backend)
    async def through_window() -> None:
        window_starts.append(time.monotonic())

    await asyncio.gather(*(through_window() for _ in range(10)))
    assert max_in_window(window_starts, 0.5) <= 5


async def test_concurrency_limit_holds_for_tasks(backend: Backend) -> None:
    in_flight = peak = 0

    @rate_limited(concurrency=3, backend=backend)
    async def call() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1

    began = time.monotonic()
    await asyncio.gather(*(call() for _ in range(15)))
    assert peak == 3
    assert time.monotonic() - began < 2.0  # freed slots are reused promptly, not polled for


def test_concurrency_limit_holds_for_threads(backend: Backend) -> None:
    in_flight = peak = 0
    lock = threading.Lock()

    @rate_limited(concurrency=2, backend=backend)
    def call() -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak == 2


def assert_arrival_order(order: list[int], callers: int, backend: Backend) -> None:
    """Every caller ran, in arrival order.  On Redis one caller may have stepped out of line: a
    reserved start it reaches too late on a busy host is given back and asked for again, behind
    those queued meanwhile (docs/rate_limited.md); locally nothing is ever late."""
    assert sorted(order) == list(range(callers))
    if isinstance(backend, LocalBackend):
        assert order == list(range(callers))
        return
    assert any(order[:k] + order[k + 1 :] == sorted(order[:k] + order[k + 1 :]) for k in range(callers)), order


async def test_waiters_are_admitted_in_arrival_order(backend: Backend) -> None:
    order: list[int] = []

    @rate_limited(1, 0.05, backend=backend)
    async def call(i: int) -> None:
        order.append(i)

    await open_connections(backend, 8)
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0.001)  # arrive one after another
    await asyncio.gather(*tasks)
    assert_arrival_order(order, 8, backend)


def test_threads_are_admitted_in_arrival_order(backend: Backend) -> None:
    order: list[int] = []

    @rate_limited(1, 0.05, backend=backend)
    def call(i: int) -> None:
        order.append(i)

    open_connections_from_threads(backend, 6)
    threads = []
    for i in range(6):
        thread = threading.Thread(target=call, args=(i,))
        thread.start()
        threads.append(thread)
        time.sleep(0.005)
    for thread in threads:
        thread.join(10)
    assert_arrival_order(order, 6, backend)


def test_max_wait_fails_at_once_when_the_wait_is_known_to_be_too_long(backend: Backend) -> None:
    @rate_limited(2, 30.0, backend=backend, max_wait=0.5)
    def call() -> str:
        return "ok"

    assert call() == call() == "ok"
    began = time.monotonic()
    with pytest.raises(RateLimitTimeout) as caught:
        call()
    assert time.monotonic() - began < 0.45  # raised, not slept (that would take max_wait, 0.5 s)
    assert isinstance(caught.value, glm_guard.GLMRateLimitException)
    assert caught.value.expected_wait is not None and caught.value.expected_wait > 29


async def test_max_wait_bounds_a_wait_for_a_concurrency_slot(backend: Backend) -> None:
    release = asyncio.Event()

    @rate_limited(concurrency=1, backend=backend, max_wait=0.1)
    async def call() -> None:
        await release.wait()

    holder = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    with pytest.raises(RateLimitTimeout):
        await call()
    release.set()
    await holder
    await call()  # the timed-out waiter left no trace: the slot is free again


async def test_short_wait_within_max_wait_is_served(backend: Backend) -> None:
    @rate_limited(1, 0.1, backend=backend, max_wait=1.0)
    async def call() -> int:
        return 1

    assert [await call() for _ in range(3)] == [1, 1, 1]


def test_functions_with_one_key_share_one_budget(backend: Backend) -> None:
    @rate_limited(2, 30.0, key="glm-4", backend=backend, max_wait=0)
    def first() -> None: ...

    @rate_limited(2, 30.0, key="glm-4", backend=backend, max_wait=0)
    def second() -> None: ...

    first()
    second()
    with pytest.raises(RateLimitTimeout):
        first()


def test_default_key_is_module_and_qualified_name(local_backend: LocalBackend) -> None:
    class Reasoner:
        @rate_limited(1, 30.0, backend=local_backend)
        def reason(self) -> None: ...

    expected = f"{__name__}.test_default_key_is_module_and_qualified_name.<locals>.Reasoner.reason"
    assert expected in local_backend._limiters


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, backend: Backend) -> None:
    monkeypatch.setenv("GLM_API_MAX_CALLS_PER_MINUTE", "3")
    monkeypatch.setenv("GLM_API_MAX_CONCURRENCY", "2")
    glm_guard.reload_settings()

    @rate_limited(backend=backend, max_wait=0.2)
    def call() -> None: ...

    for _ in range(3):
        call()
    began = time.monotonic()
    with pytest.raises(RateLimitTimeout) as caught:
        call()
    spent = time.monotonic() - began  # the expected wait counts from the call's start
    assert caught.value.expected_wait is not None
    assert 55 < caught.value.expected_wait <= 60 + window_margin(backend.name, 60) + spent
    if isinstance(backend, LocalBackend):
        limiter = next(iter(backend._limiters.values()))
        assert limiter.state.keep == 3


def test_env_concurrency_is_enforced(monkeypatch: pytest.MonkeyPatch, backend: Backend) -> None:
    monkeypatch.setenv("GLM_API_MAX_CONCURRENCY", "1")
    glm_guard.reload_settings()
    entered = threading.Event()
    leave = threading.Event()

    @rate_limited(backend=backend, max_wait=0.1)
    def call() -> None:
        entered.set()
        leave.wait(5)

    holder = threading.Thread(target=call)
    holder.start()
    entered.wait(5)
    with pytest.raises(RateLimitTimeout):
        call()
    leave.set()
    holder.join(5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"calls": 0}, "calls"),
        ({"calls": -3}, "calls"),
        ({"calls": 2.5}, "calls"),
        ({"calls": True}, "calls"),
        ({"calls": 5, "period": 0}, "period"),
        ({"calls": 5, "period": -1}, "period"),
        ({"concurrency": 0}, "concurrency"),
        ({"calls": 5, "max_wait": -1}, "max_wait"),
        ({"calls": 5, "key": ""}, "key"),
        ({"calls": 5, "backend": "memcached"}, "backend"),
        ({"calls": 5, "cooldown": -2}, "cooldown"),
        ({"period": 1.0}, "period"),  # once a silent per-minute limit: period means nothing without calls
        ({"period": 1.0, "concurrency": 2}, "period"),
    ],
)
def test_bad_arguments_fail_at_decoration_naming_the_parameter(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        rate_limited(**kwargs)  # type: ignore[call-overload]
    assert caught.value.name == name
    assert name in str(caught.value)


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match="valid: 'local', 'redis'"):
        rate_limited(5, backend="memcached")


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM_API_MAX_CALLS_PER_MINUTE", "abc")
    with pytest.raises(ConfigurationError, match="GLM_API_MAX_CALLS_PER_MINUTE"):
        glm_guard.reload_settings()


def test_unknown_backend_in_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM_GUARD_BACKEND", "memcached")
    glm_guard.reload_settings()
    with pytest.raises(ConfigurationError, match="GLM_GUARD_BACKEND"):
        rate_limited(5)


def test_a_rate_limit_error_pauses_every_caller_of_the_key(backend: Backend) -> None:
    calls: list[float] = []

    @rate_limited(100, 1.0, key="shared", backend=backend, cooldown=0.3)
    def failing() -> None:
        raise ErrorWithText(SEED_1302)

    @rate_limited(100, 1.0, key="shared", backend=backend, cooldown=0.3)
    def other() -> None:
        calls.append(time.monotonic())

    began = time.monotonic()
    with pytest.raises(ErrorWithText):
        failing()
    other()
    assert calls[0] - began >= 0.28


def test_a_permanent_error_causes_no_pause(backend: Backend) -> None:
    """A content-filter refusal (1301) is the request's fault, not the key's: no cooldown.
    (Arrears and quota windows do pause the key: tests/test_pauses.py.)"""

    @rate_limited(100, 1.0, key="k", backend=backend, cooldown=5.0, max_wait=0.5)
    def call(fail: bool) -> None:
        if fail:
            raise ErrorWithText('400 {"error":{"code":"1301","message":"unsafe content"}}')

    with pytest.raises(ErrorWithText):
        call(True)
    call(False)  # would raise RateLimitTimeout had a 5 s cooldown started


def test_retry_after_sets_the_pause_and_a_shorter_one_never_shortens_it(backend: Backend) -> None:
    limiter = backend.limiter("k")
    limiter.cooldown(10.0)
    limiter.cooldown(0.1)

    @rate_limited(100, 1.0, key="k", backend=backend, max_wait=1.0)
    def call() -> None: ...

    with pytest.raises(RateLimitTimeout) as caught:
        call()
    assert caught.value.expected_wait is not None and caught.value.expected_wait > 9


async def test_cancelled_waiter_leaks_no_permit(backend: Backend, limiter_state: LimiterState) -> None:
    gate = asyncio.Event()

    @rate_limited(concurrency=1, backend=backend, key="cancelled")
    async def call() -> None:
        await gate.wait()

    holder = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    holder.cancel()  # cancelled while holding the permit
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert limiter_state.in_flight("cancelled") == 0
    if isinstance(backend, LocalBackend):
        assert not backend._limiters["cancelled"]._waiters
    gate.set()
    await asyncio.wait_for(call(), 1)


async def test_wait_for_timeout_around_a_guarded_call_leaks_nothing(
    backend: Backend, limiter_state: LimiterState
) -> None:
    @rate_limited(concurrency=1, backend=backend, key="timed-out")
    async def slow() -> None:
        await asyncio.sleep(10)

    for _ in range(3):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow(), 0.02)
    assert limiter_state.in_flight("timed-out") == 0


def test_one_limit_is_shared_by_threads_each_running_its_own_loop(backend: Backend) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    @rate_limited(3, 1.0, backend=backend)
    async def call() -> None:
        with lock:
            starts.append(time.monotonic())

    async def burst() -> None:
        await asyncio.gather(*(call() for _ in range(3)))

    threads = [threading.Thread(target=asyncio.run, args=(burst(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(starts) == 9
    assert max_in_window(starts, 1.0, slack=THREAD_WAKE_SLACK) <= 3


def test_set_testing_turns_waiting_off(backend: Backend) -> None:
    @rate_limited(1, 60.0, backend=backend, max_wait=0)
    def call() -> int:
        return 1

    call()
    with glm_guard.set_testing(True):
        assert [call() for _ in range(5)] == [1] * 5
    with pytest.raises(RateLimitTimeout):
        call()


def test_an_interrupted_waiting_thread_leaks_no_permit(backend: Backend, limiter_state: LimiterState) -> None:
    """An exception raised inside a thread while it waits (as KeyboardInterrupt would be)."""
    import ctypes

    class Interrupted(Exception):
        pass

    hold = threading.Event()
    outcome: list[str] = []

    @rate_limited(concurrency=1, backend=backend, key="interrupt")
    def call() -> None:
        hold.wait(5)

    holder = threading.Thread(target=call)
    holder.start()
    time.sleep(0.05)

    def waiter_body() -> None:
        try:
            call()
            outcome.append("ran")
        except Interrupted:
            outcome.append("interrupted")

    waiter = threading.Thread(target=waiter_body)
    waiter.start()
    time.sleep(0.05)
    # The exception is raised as soon as the waiter runs again, i.e. when it is woken.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(waiter.ident or 0), ctypes.py_object(Interrupted))
    hold.set()
    waiter.join(5)
    holder.join(5)
    assert outcome == ["interrupted"]
    if isinstance(backend, LocalBackend):
        assert len(backend._limiters["interrupt"]._waiters) == 0
    assert limiter_state.in_flight("interrupt") == 0
    call()  # the slot is free: neither the holder nor the interrupted waiter kept it


def test_a_concurrency_waiter_wakes_when_a_cooldown_replaces_the_full_pool(backend: Backend) -> None:
    """The holder fails with a 1302: its slot comes free under a cooldown; the waiter must not hang."""
    entered = threading.Event()
    results: list[str] = []

    @rate_limited(concurrency=1, backend=backend, key="cool-conc", cooldown=0.2)
    def call(fail: bool) -> str:
        if fail:
            entered.set()
            time.sleep(0.1)
            raise ErrorWithText(SEED_1302)
        return "ok"

    def fail_once() -> None:
        with pytest.raises(ErrorWithText):
            call(True)

    holder = threading.Thread(target=fail_once)
    holder.start()
    entered.wait(5)
    waiter = threading.Thread(target=lambda: results.append(call(False)))
    waiter.start()
    waiter.join(5)
    holder.join(5)
    assert results == ["ok"]


# A loop closed under its tasks strands what they held (the task, a Redis connection it
# opened): Python reports those as unraisable ResourceWarnings when they are collected, which
# is its warning to whoever closed the loop.  They are collected here, not in a later test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_waiter_whose_event_loop_was_closed_does_not_block_the_queue(
    backend: Backend, limiter_state: LimiterState
) -> None:
    """A loop closed without cancelling its tasks (not asyncio.run) leaves a waiter behind."""
    gate = threading.Event()

    @rate_limited(concurrency=1, backend=backend, key="closed-loop")
    def hold() -> None:
        gate.wait(5)

    @rate_limited(concurrency=1, backend=backend, key="closed-loop")
    async def wait_in_a_loop() -> None:
        return None

    holder = threading.Thread(target=hold, daemon=True)  # daemon: a thread left waiting cannot hang the run
    holder.start()
    time.sleep(0.05)
    loop = asyncio.new_event_loop()
    task = loop.create_task(wait_in_a_loop())
    loop.run_until_complete(asyncio.sleep(0.05))  # the task is now queued behind the holder
    loop.close()  # closed with the task still pending, as a careless shutdown would
    gate.set()
    holder.join(5)
    hold_again = threading.Thread(target=hold, daemon=True)
    hold_again.start()
    hold_again.join(5)
    assert not hold_again.is_alive()  # the dead waiter neither blocked it nor kept the slot
    assert limiter_state.in_flight("closed-loop") == 0
    if isinstance(backend, LocalBackend):
        assert not backend._limiters["closed-loop"]._waiters
    asyncio.run(wait_in_a_loop())  # a later loop is served too (and drops the dead loop's client)
    del task, loop
    gc.collect()


async def test_closing_a_guarded_stream_early_gives_its_permit_back_at_once(
    backend: Backend, limiter_state: LimiterState
) -> None:
    from collections.abc import AsyncIterator

    from glm_guard import retry_on_1302

    closed: list[bool] = []

    @retry_on_1302(2)
    @rate_limited(concurrency=1, backend=backend, key="stream-close")
    async def stream() -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
        finally:
            closed.append(True)

    chunks = stream()
    assert await chunks.__anext__() == 0
    await chunks.aclose()
    assert closed == [True]  # the user's finally ran inside aclose(), not a loop tick later
    assert limiter_state.in_flight("stream-close") == 0
