"""Redis faults, injected into real redis-server processes: down, killed, paused, restarted.

Every test names "redis" so CI refuses to let them be skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis

from glm_guard import BackendError, RateLimitTimeout, cached_response, rate_limited
from glm_guard.backends import RedisBackend
from glm_guard.backends._redis import _health

from .conftest import REDIS_PASSWORD, RedisServer, free_port


def closed_port_url() -> str:
    return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"


def warnings_about_redis(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]


def test_redis_down_at_start_local_policy_limits_locally(caplog: pytest.LogCaptureFixture) -> None:
    backend = RedisBackend(closed_port_url(), socket_timeout=0.5)

    @rate_limited(4, 60.0, key="down-local", backend=backend, max_wait=0)
    def call() -> str:
        return "ok"

    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="glm_guard"):
        assert [call() for _ in range(4)] == ["ok"] * 4
        with pytest.raises(RateLimitTimeout):
            call()  # the local share of the limit still holds
    assert time.monotonic() - began < 2.0  # no call hung on the dead server
    assert len(warnings_about_redis(caplog)) == 1  # one warning per outage, not per call
    assert backend.outage_report()["outage_calls"] == 5
    backend.close()


def test_redis_down_at_start_open_policy_does_not_limit() -> None:
    backend = RedisBackend(closed_port_url(), socket_timeout=0.5)

    @rate_limited(1, 60.0, key="down-open", backend=backend, on_backend_error="open", max_wait=0)
    def call() -> str:
        return "ok"

    assert [call() for _ in range(5)] == ["ok"] * 5
    backend.close()


def test_redis_down_at_start_closed_policy_raises_at_once() -> None:
    backend = RedisBackend(closed_port_url(), socket_timeout=0.5)

    @rate_limited(5, 60.0, key="down-closed", backend=backend, on_backend_error="closed")
    def call() -> str:
        return "ok"

    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(BackendError):
            call()
        assert time.monotonic() - began < 1.0
    backend.close()


async def test_redis_down_at_start_async_local_policy() -> None:
    backend = RedisBackend(closed_port_url(), socket_timeout=0.5)

    @rate_limited(3, 60.0, concurrency=2, key="down-async", backend=backend, max_wait=0)
    async def call() -> str:
        return "ok"

    assert [await call() for _ in range(3)] == ["ok"] * 3
    with pytest.raises(RateLimitTimeout):
        await call()
    backend.close()


def test_redis_killed_mid_run_then_restarted_resumes_sharing(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.5)

    @rate_limited(1000, 1.0, key="killed-mid-run", backend=backend)
    def call() -> str:
        return "ok"

    assert call() == "ok"
    assert backend.outage_report()["outage_calls"] == 0
    with caplog.at_level(logging.WARNING, logger="glm_guard"):
        own_redis.kill()
        for _ in range(20):
            assert call() == "ok"  # served under the local policy, each at once
        assert backend.outage_report()["outage_calls"] >= 19
        own_redis.start()
        deadline = time.monotonic() + 10
        client = redis.Redis.from_url(own_redis.url)
        while time.monotonic() < deadline and not client.exists("glm_guard:{killed-mid-run}:starts"):
            call()
            time.sleep(0.1)
        assert client.exists("glm_guard:{killed-mid-run}:starts")  # sharing resumed within seconds
        client.close()
    assert len(warnings_about_redis(caplog)) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)
    backend.close()


def failure_of_a_request_sent(at: float) -> BackendError:
    error = BackendError("redis backend: ConnectionError: Connection refused")
    error.sent = at
    return error


def test_a_failure_sent_before_redis_answered_again_starts_no_new_outage(caplog: pytest.LogCaptureFixture) -> None:
    """On a busy host a thread may report a request that failed in the outage after another
    request found Redis back: that failure belongs to the outage that ended, not a new one."""
    health = _health.Health(closed_port_url())
    sent_in_the_outage = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="glm_guard"):
        health.failed(failure_of_a_request_sent(sent_in_the_outage))
        assert not health.available()
        health.succeeded()  # a probe after the backoff: Redis answers again
        health.failed(failure_of_a_request_sent(sent_in_the_outage))  # reported late
        assert health.available() and health.outages == 1
        health.failed(failure_of_a_request_sent(time.monotonic()))  # sent after: a new outage
    assert not health.available() and health.outages == 2
    assert len(warnings_about_redis(caplog)) == 2


def test_a_paused_redis_never_hangs_a_call(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # A backoff longer than any stall of a busy host: the second call surely falls within it.
    monkeypatch.setattr(_health, "FIRST_BACKOFF_SECONDS", 5.0)
    backend = RedisBackend(own_redis.url, socket_timeout=1.0)

    # "open": the time measured is Redis's alone (the local share would first wait out a period).
    @rate_limited(1000, 1.0, key="paused", backend=backend, on_backend_error="open")
    def call() -> str:
        return "ok"

    assert call() == "ok"
    own_redis.pause()
    try:
        began = time.monotonic()
        assert call() == "ok"
        assert time.monotonic() - began < 2.5  # one socket timeout, then the local policy
        began = time.monotonic()
        assert call() == "ok"
        assert time.monotonic() - began < 0.7  # within the backoff no socket is even tried (1 s each)
    finally:
        own_redis.resume()
    backend.close()


async def test_a_paused_redis_never_hangs_an_async_call(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, socket_timeout=0.3)

    @rate_limited(1000, 1.0, concurrency=10, key="paused-async", backend=backend)
    async def call() -> str:
        return "ok"

    assert await call() == "ok"
    own_redis.pause()
    try:
        began = time.monotonic()
        assert await asyncio.wait_for(call(), 5) == "ok"
        assert time.monotonic() - began < 1.5
    finally:
        own_redis.resume()
    backend.close()


def test_cache_and_cooldown_fall_back_to_local_state_redis() -> None:
    backend = RedisBackend(closed_port_url(), socket_timeout=0.5)
    calls: list[int] = []

    @cached_response(backend=backend, key="down-cache")
    def ask(question: str) -> str:
        calls.append(1)
        return question.upper()

    assert ask("q") == ask("q") == "Q"
    assert len(calls) == 1  # served from this process's cache while Redis is away

    @rate_limited(100, 1.0, key="down-cooldown", backend=backend, cooldown=0.3)
    def limited(fail: bool) -> None:
        if fail:
            raise RuntimeError('429 {"error":{"code":"1302","message":"busy"}}')

    with pytest.raises(RuntimeError):
        limited(True)
    began = time.monotonic()
    limited(False)
    assert time.monotonic() - began >= 0.25  # the pause was kept locally
    backend.close()


async def test_sequential_event_loops_each_get_their_own_client_redis(redis_url: str) -> None:
    backend = RedisBackend(redis_url)

    @rate_limited(100, 1.0, concurrency=2, key="loops", backend=backend)
    async def call() -> str:
        await asyncio.sleep(0)
        return "ok"

    def run_in_fresh_loop() -> str:
        return asyncio.run(call())

    import threading

    results: list[str] = []
    for _ in range(3):  # one after another, each asyncio.run a new loop
        thread = threading.Thread(target=lambda: results.append(run_in_fresh_loop()))
        thread.start()
        thread.join(10)
    threads = [threading.Thread(target=lambda: results.append(run_in_fresh_loop())) for _ in range(3)]
    for thread in threads:  # and side by side, each thread its own loop
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["ok"] * 6
    backend.close()


def test_after_fork_the_child_uses_its_own_connections_redis(redis_url: str) -> None:
    import os

    backend = RedisBackend(redis_url)

    @rate_limited(100, 1.0, concurrency=2, key="forked", backend=backend)
    def call() -> int:
        return os.getpid()

    assert call() == os.getpid()
    parent_client = backend.connections.client()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not touch the parent's pool, threads or sockets
        try:
            ok = call() == os.getpid() and backend.connections.client() is not parent_client
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert status == 0
    assert call() == os.getpid()  # the parent's connection still works
    assert backend.connections.client() is parent_client
    backend.close()


def test_after_fork_cache_calls_never_share_the_parents_socket_redis(redis_url: str) -> None:
    """A forked child that shared its parent's socket would mix the two processes' replies."""
    import os

    backend = RedisBackend(redis_url)

    @cached_response(ttl=60, key="forked-cache", backend=backend)
    def echo(text: str) -> str:
        return text.upper()

    assert echo("warm") == "WARM"  # the parent now keeps an idle connection
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: interleaves with the parent below; a shared socket mixes replies
        try:
            ok = all(echo(f"child {i}") == f"CHILD {i}" for i in range(60))
            os.write(write, b"1" if ok else b"0")
        except BaseException:
            os.write(write, b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert all(echo(f"parent {i}") == f"PARENT {i}" for i in range(60))
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and status == 0
    os.close(read)
    assert echo("warm") == "WARM"
    backend.close()


def test_stats_count_the_calls_served_in_an_outage_redis() -> None:
    import glm_guard

    url = closed_port_url()
    backend = RedisBackend(url, socket_timeout=0.5)

    @rate_limited(10, 60.0, key="down-stats", backend=backend)
    def call() -> str:
        return "ok"

    for _ in range(3):
        call()
    masked = url.replace(REDIS_PASSWORD, "***")
    (report,) = [r for r in glm_guard.stats()["backends"] if r["backend"] == masked]
    assert report["outage_calls"] == 3 and report["outages"] == 1
    assert REDIS_PASSWORD not in str(report)
    backend.close()
