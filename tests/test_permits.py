"""No permit outlives its caller: cancelled, timed out, or cut off by a Redis that stopped answering.

Also: ``max_wait`` bounds the wait for the limit only, and a queue of callers never waits
more than one socket timeout for a Redis that went away.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time

import pytest

from glm_guard import BackendError, rate_limited
from glm_guard.backends import Backend, RedisBackend
from glm_guard.monitoring import GuardEvent, LeaseLost, subscribe

from .conftest import LimiterState, RedisServer
from .helpers import eventually, in_threads_at_once


async def test_thousands_of_calls_cancelled_at_random_points_leave_the_pool_free(
    backend: Backend, limiter_state: LimiterState
) -> None:
    rng = random.Random(12)

    @rate_limited(1_000_000, 1.0, concurrency=4, key="cancel-storm", backend=backend)
    async def call() -> str:
        await asyncio.sleep(rng.uniform(0, 0.002))
        return "ok"

    outcomes: list[str] = []

    async def cancelled_at_random() -> None:
        try:
            outcomes.append(await asyncio.wait_for(call(), timeout=rng.uniform(0, 0.004)))
        except TimeoutError:
            outcomes.append("cancelled")

    for _ in range(100):  # 3,200 callers, cancelled in the queue, mid-script, mid-call or after
        await asyncio.gather(*(cancelled_at_random() for _ in range(32)))

    assert outcomes.count("cancelled") > 1_000 and outcomes.count("ok") > 0  # both, at many points
    assert await asyncio.to_thread(eventually, lambda: limiter_state.in_flight("cancel-storm") == 0, 2.0)
    finished = await asyncio.wait_for(asyncio.gather(*(call() for _ in range(12))), 3.0)
    assert finished == ["ok"] * 12  # the full pool: four at a time, none stuck
    if isinstance(backend, RedisBackend):
        assert eventually(lambda: backend.leases.abandoned() == 0, 2.0)


async def test_a_timeout_while_redis_is_paused_leaks_no_lease_once_it_wakes(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.3, lease=10.0)
    client = own_redis.client()

    @rate_limited(concurrency=4, key="paused-timeouts", backend=backend, on_backend_error="closed")
    async def call() -> str:
        return "ok"

    assert await call() == "ok"
    own_redis.pause()
    try:
        for _ in range(4):  # each admission script waits in the server's socket when the caller gives up
            with pytest.raises((TimeoutError, BackendError)):
                await asyncio.wait_for(call(), 0.2)
    finally:
        own_redis.resume()
    # The scripts run when the server wakes, granting leases to callers long gone: given back at
    # once, not when the 10 s lease runs out.
    assert await asyncio.to_thread(eventually, lambda: client.zcard("glm_guard:{paused-timeouts}:leases") == 0, 3.0)
    assert await asyncio.wait_for(asyncio.gather(*(call() for _ in range(8))), 3.0) == ["ok"] * 8
    client.close()
    backend.close()


def test_a_release_during_the_health_backoff_is_still_given_back_redis(redis_url: str) -> None:
    backend = RedisBackend(redis_url, lease=10.0)
    client = backend.connections.client()
    entered, leave = threading.Event(), threading.Event()

    @rate_limited(concurrency=2, key="backoff-release", backend=backend)
    def hold() -> None:
        entered.set()
        leave.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(5)
    for _ in range(5):  # this process now skips Redis for a few seconds, though it is up
        backend.health.failed(BackendError("a blip"))
    assert not backend.health.available()
    leave.set()
    holder.join(5)
    assert eventually(lambda: client.zcard("glm_guard:{backoff-release}:leases") == 0, 2.0)
    backend.close()


async def test_max_wait_zero_is_answered_whenever_the_limit_has_room(backend: Backend) -> None:
    @rate_limited(10_000, 1.0, concurrency=1_000, max_wait=0, key="room-async", backend=backend)
    async def call() -> str:
        return "ok"

    assert await asyncio.gather(*(call() for _ in range(200))) == ["ok"] * 200


def test_a_tiny_max_wait_is_answered_whenever_the_limit_has_room_threads(backend: Backend) -> None:
    @rate_limited(100_000, 1.0, concurrency=1_000, max_wait=0.001, key="room-threads", backend=backend)
    def call() -> str:
        return "ok"

    failures: list[BaseException] = []

    def caller() -> None:
        for _ in range(100):
            try:
                call()
            except Exception as error:
                failures.append(error)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []


def test_callers_queued_behind_a_paused_redis_wait_one_socket_timeout_not_one_each(
    own_redis: RedisServer,
) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.5)

    # "open": the wait measured is Redis's alone (the local share would first wait out a period).
    @rate_limited(1_000, 1.0, concurrency=100, key="paused-queue", backend=backend, on_backend_error="open")
    def call() -> str:
        return "ok"

    assert call() == "ok"
    waits: list[float] = []

    def caller() -> None:
        began = time.monotonic()
        assert call() == "ok"  # served by the outage policy once Redis is known to be away
        waits.append(time.monotonic() - began)

    own_redis.pause()
    try:
        in_threads_at_once(caller, 12, within=15)
    finally:
        own_redis.resume()
    assert len(waits) == 12
    assert max(waits) < 1.5  # one 0.5 s timeout (with slack), where a queue in turn took 0.5, 1.0, ... 6.0 s
    backend.close()


def test_a_lease_lost_under_a_live_holder_is_reported_and_put_back_redis(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisBackend(redis_url, lease=0.6)  # renewed every 0.2 s
    client = backend.connections.client()
    leases_key = "glm_guard:{lost-lease}:leases"
    events: list[GuardEvent] = []
    unsubscribe = subscribe(events.append)
    entered, leave = threading.Event(), threading.Event()

    @rate_limited(concurrency=1, key="lost-lease", backend=backend)
    def hold() -> None:
        entered.set()
        leave.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(5)
        caplog.set_level(logging.WARNING, logger="glm_guard")
        client.delete(leases_key)  # as if Redis lost it, or the holder was frozen past its lease
        assert eventually(lambda: any(isinstance(e, LeaseLost) for e in events), 2.0)
        assert client.zcard(leases_key) == 1  # its call is still running: the slot is counted again
        lost = [e for e in events if isinstance(e, LeaseLost)]
        assert lost[0].key == "lost-lease" and lost[0].leases == 1
        assert any("lost-lease" in r.getMessage() and "lease" in r.getMessage() for r in caplog.records)
    finally:
        leave.set()
        holder.join(5)
        unsubscribe()
    assert eventually(lambda: client.zcard(leases_key) == 0, 2.0)
    backend.close()
