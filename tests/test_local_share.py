"""The ``local`` policy across an outage: what each process's share counts, and what Redis takes back.

Each test plays one transition on a real redis-server of its own (killed, restarted, paused)
and checks Redis's own count (``ZCARD`` of the key's leases and starts) or the calls admitted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from glm_guard import RateLimitTimeout, rate_limited
from glm_guard.backends import RedisBackend

from .conftest import RedisServer
from .helpers import eventually

pytestmark = pytest.mark.redis


class Holders:
    """Calls of one guarded function held open in threads until ``release_all``."""

    def __init__(self, call: Callable[[threading.Event, threading.Event], None]) -> None:
        self._call = call
        self._threads: list[threading.Thread] = []
        self._leave = threading.Event()

    def start(self, count: int) -> None:
        for _ in range(count):
            entered = threading.Event()
            thread = threading.Thread(target=self._call, args=(entered, self._leave), daemon=True)
            thread.start()
            assert entered.wait(10)
            self._threads.append(thread)

    def release_all(self) -> None:
        self._leave.set()
        for thread in self._threads:
            thread.join(10)


def leases(server: RedisServer, key: str) -> int:
    client = server.client(socket_timeout=5)
    try:
        return int(client.zcard(f"glm_guard:{{{key}}}:leases"))
    finally:
        client.close()


def back_from_outage(backend: RedisBackend) -> None:
    """Wait until this process tries Redis again (its backoff has passed)."""
    assert eventually(backend.health.available, 6.0)


def test_calls_run_without_redis_are_adopted_once_by_concurrent_callers_redis(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.3)

    @rate_limited(concurrency=8, key="adopt-once", backend=backend)
    def hold(entered: threading.Event, leave: threading.Event) -> None:
        entered.set()
        leave.wait(10)

    own_redis.kill()
    outage = Holders(hold)
    outage.start(2)  # admitted by the local share (Redis down at start: no pause)
    own_redis.start()
    back_from_outage(backend)
    after = Holders(hold)
    threads = [threading.Thread(target=after.start, args=(1,)) for _ in range(3)]  # three adopt at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert leases(own_redis, "adopt-once") == 5  # the two from the outage, adopted once each, and three
    outage.release_all()
    after.release_all()
    assert eventually(lambda: leases(own_redis, "adopt-once") == 0, 2.0)
    backend.close()


def test_an_adoption_cut_off_by_a_pause_still_gives_its_leases_back_redis(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.3, lease=10.0)

    @rate_limited(concurrency=8, key="adopt-paused", backend=backend)
    def hold(entered: threading.Event, leave: threading.Event) -> None:
        entered.set()
        leave.wait(10)

    own_redis.kill()
    outage = Holders(hold)
    outage.start(2)
    own_redis.start()
    back_from_outage(backend)
    own_redis.pause()
    try:
        during = Holders(hold)
        during.start(1)  # its adoption times out (the script runs when Redis wakes): served locally
    finally:
        own_redis.resume()
    outage.release_all()
    during.release_all()
    # The adopted leases' calls ended: given back at once, not after the 10 s lease.
    assert eventually(lambda: leases(own_redis, "adopt-paused") == 0, 3.0)
    backend.close()


def test_the_local_share_counts_the_calls_still_running_on_redis_leases_redis(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.3)

    @rate_limited(concurrency=2, key="share-counts", backend=backend, max_wait=2.0)
    def hold(entered: threading.Event, leave: threading.Event) -> None:
        entered.set()
        leave.wait(10)

    running = Holders(hold)
    running.start(2)  # both slots, through Redis
    own_redis.kill()
    with pytest.raises(RateLimitTimeout):
        hold(threading.Event(), threading.Event())  # the share (2 of 2, one process) sees both still running
    running.release_all()
    after = Holders(hold)
    after.start(2)  # and gets its slots back as they end
    after.release_all()
    backend.close()


def test_starts_made_without_redis_join_the_shared_window_redis(own_redis: RedisServer) -> None:
    first = RedisBackend(own_redis.url, socket_timeout=0.3, expected_processes=2)

    @rate_limited(20, 2.0, key="starts-adopted", backend=first, max_wait=0)
    def call_first() -> str:
        return "ok"

    own_redis.kill()
    assert [call_first() for _ in range(10)] == ["ok"] * 10  # its share: 20 // 2
    own_redis.start()
    back_from_outage(first)
    with pytest.raises(RateLimitTimeout):  # its share is spent for this window (the grace time)...
        call_first()  # ...but first what it did meanwhile went to Redis
    second = RedisBackend(own_redis.url)  # a process that never saw the outage

    @rate_limited(20, 2.0, key="starts-adopted", backend=second, max_wait=0)
    def call_second() -> str:
        return "ok"

    admitted = 0
    for _ in range(20):
        try:
            call_second()
            admitted += 1
        except RateLimitTimeout:
            break
    assert admitted <= 10  # 20 in the window, 10 of them the first process's
    first.close()
    second.close()


async def test_callers_cancelled_while_their_start_is_reserved_give_the_start_back_redis(
    own_redis: RedisServer,
) -> None:
    import asyncio

    backend = RedisBackend(own_redis.url)

    @rate_limited(2, 1.0, key="unreserve", backend=backend)
    async def call() -> str:
        return "ok"

    assert [await call(), await call()] == ["ok", "ok"]  # the window is full for a second
    waiting = [asyncio.create_task(call()) for _ in range(4)]  # each reserves a start, and sleeps
    await asyncio.sleep(0.3)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await asyncio.sleep(1.0)  # the first two starts have left the window

    @rate_limited(2, 1.0, key="unreserve", backend=backend, max_wait=0)
    async def now() -> str:
        return "ok"

    assert await now() == "ok"  # the cancelled callers' reservations were given back
    backend.close()


def test_max_wait_zero_takes_a_free_slot_though_a_waiter_is_queued_redis(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url)

    @rate_limited(concurrency=3, key="free-slot", backend=backend)
    def hold(entered: threading.Event, leave: threading.Event) -> None:
        entered.set()
        leave.wait(10)

    @rate_limited(concurrency=3, key="free-slot", backend=backend, max_wait=0)
    def now() -> str:
        return "ok"

    first, second = Holders(hold), Holders(hold)
    first.start(2)
    second.start(1)
    queued = Holders(hold)
    waiter = threading.Thread(target=queued.start, args=(1,), daemon=True)
    waiter.start()  # refused: first in this process's queue for a slot
    time.sleep(0.3)
    first.release_all()  # two slots free: the waiter takes one
    assert eventually(lambda: not waiter.is_alive(), 5.0)
    assert now() == "ok"  # the other is free: "now" needs no place in the queue
    second.release_all()
    queued.release_all()
    backend.close()


def test_a_call_run_across_two_outages_holds_one_slot_of_the_share_redis(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.3)

    @rate_limited(1_000, 0.2, concurrency=2, key="two-outages", backend=backend, max_wait=0.5)
    def hold(entered: threading.Event, leave: threading.Event) -> None:
        entered.set()
        leave.wait(20)

    own_redis.kill()
    long_call = Holders(hold)
    long_call.start(1)  # admitted by the share, Redis down at start
    own_redis.start()
    back_from_outage(backend)
    back = Holders(hold)
    back.start(1)  # back: the long call is written to Redis (adopted) before this one
    back.release_all()
    time.sleep(5.5)  # past the grace time (one period plus the longest backoff)
    own_redis.kill()
    during = Holders(hold)
    during.start(1)  # the share holds the long call and this one: 2 of 2
    long_call.release_all()  # its slot is free once, not twice
    more = Holders(hold)
    more.start(1)
    with pytest.raises(RateLimitTimeout):
        hold(threading.Event(), threading.Event())  # 2 in flight: no third
    during.release_all()
    more.release_all()
    backend.close()


def test_a_lease_dropped_by_an_admission_cut_off_by_the_outage_frees_its_slot_in_the_share_redis(
    own_redis: RedisServer,
) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.3)

    @rate_limited(1, 2.0, concurrency=1, key="dropped-lease", backend=backend, max_wait=8.0)
    def call() -> str:
        return "ok"

    assert call() == "ok"  # the window's one start: the next caller is given a start 2 s on
    answers: list[str | BaseException] = []

    def keep(target: Callable[[], str]) -> Callable[[], None]:
        def run() -> None:
            try:
                answers.append(target())
            except BaseException as error:  # recorded, so a timeout fails the test below
                answers.append(error)

        return run

    reserved = threading.Thread(target=keep(call), daemon=True)
    reserved.start()  # holds a lease while it sleeps until its start
    assert eventually(lambda: leases(own_redis, "dropped-lease") == 1, 2.0)
    time.sleep(0.3)  # its reply has reached it: the lease is this process's now, 1.7 s before its start
    own_redis.kill()
    in_outage = threading.Thread(target=keep(call), daemon=True)
    in_outage.start()  # switches to the share, which counts the reserved caller's lease as running
    # The reserved caller wakes in the share's pause, cannot confirm its start with Redis gone,
    # and drops its lease: its slot in the share must come free, or both wait until max_wait.
    reserved.join(12)
    in_outage.join(12)
    assert answers == ["ok", "ok"]
    backend.close()
