"""Token reservations a process's local share made while Redis was away join the shared budget
when Redis answers again, so the other processes count them (on a real redis-server, killed and
restarted)."""

from __future__ import annotations

from typing import Any

import pytest

from glm_guard import rate_limited
from glm_guard.backends import RedisBackend

from .conftest import RedisServer
from .helpers import admitted_at_once, eventually

pytestmark = pytest.mark.redis


def counted(server: RedisServer, key: str) -> int:
    """The tokens Redis counts in the key's budget now."""
    client = server.client(socket_timeout=5)
    try:
        return int(client.hget(f"glm_guard:{{{key}}}:spent_sizes", "total") or 0)
    finally:
        client.close()


def test_tokens_reserved_without_redis_join_the_shared_budget_redis(own_redis: RedisServer) -> None:
    key = "tokens-adopted"
    first = RedisBackend(own_redis.url, socket_timeout=0.3, expected_processes=1)  # its share: the whole budget

    @rate_limited(tokens=1000, period=5.0, key=key, backend=first, max_wait=0, estimate=lambda: 100)
    def call_first() -> dict[str, Any]:
        return {"usage": {"total_tokens": 100}}

    own_redis.kill()
    for _ in range(7):
        call_first()  # 700 reserved from the share, unknown to Redis
    own_redis.start()
    assert eventually(first.health.available, 6.0)
    call_first()  # what the share reserved goes to Redis first, then this call's 100
    assert counted(own_redis, key) == 800
    second = RedisBackend(own_redis.url)  # a process that never saw the outage

    @rate_limited(tokens=1000, period=5.0, key=key, backend=second, max_wait=0, estimate=lambda: 100)
    def call_second() -> dict[str, Any]:
        return {"usage": {"total_tokens": 100}}

    assert admitted_at_once(call_second, 10) == 2  # 1000 - 800: not 9, as when Redis knew only the last call
    first.close()
    second.close()


def test_each_reservation_is_written_back_once_across_outages_redis(own_redis: RedisServer) -> None:
    key = "tokens-adopted-once"
    first = RedisBackend(own_redis.url, socket_timeout=0.3, expected_processes=1)

    @rate_limited(tokens=1000, period=8.0, key=key, backend=first, max_wait=0, estimate=lambda: 100)
    def call() -> dict[str, Any]:
        return {"usage": {"total_tokens": 100}}

    own_redis.kill()
    for _ in range(3):
        call()
    own_redis.start()
    assert eventually(first.health.available, 6.0)
    call()
    assert counted(own_redis, key) == 400
    own_redis.pause()  # away again, its state kept: the next adoption brings only what is new
    try:
        call()  # times out on Redis: the share serves it
    finally:
        own_redis.resume()
    assert eventually(first.health.available, 6.0)
    call()
    # 400, the share's new 100 and this call's: the 400 adopted before are not written again
    # (which would make 1000 and refuse this call).  The admission cut off by the pause may
    # still have run when Redis woke, and holds its 100 until the window passes.
    assert 600 <= counted(own_redis, key) <= 700
    first.close()
