"""Every feature on each Redis deployment people run: TLS, an ACL user, a Unix socket, Sentinel, Cluster.

The servers are real (Debian's ``redis-server``, ``redis-cli``, ``openssl``), started on
loopback by :mod:`tests.redis_deployments`.  One scenario, :func:`exercise`, runs on each:
admission (rate, concurrency, cooldown, a learned limit), the shared cache with one process
computing an entry, stats added up across processes, and an alert that only one process
reports.  Two backends on one URL stand for two processes.  Sentinel and Cluster are the
``multi_node`` group (slower to start): CI runs them, and they never skip there.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import pytest
import redis

import glm_guard
from glm_guard import AutoConcurrency, ConfigurationError, RateLimitTimeout, cached_response, rate_limited
from glm_guard._redact import mask_url
from glm_guard.backends import get_backend
from glm_guard.backends._redis import RedisBackend, RedisSharedStats, _scripts
from glm_guard.monitoring import _alerts, _recorder

from . import redis_deployments as deploy
from .conftest import REDIS_PASSWORD
from .helpers import SEED_1302, ErrorWithText

#: Every command glm_guard sends, directly or from its Lua scripts: docs/distributed.md lists
#: them as the ACL a glm_guard user needs.  Found by running :func:`exercise` under a user
#: allowed everything (INFO commandstats, scripts' commands included) plus what it does not
#: reach (PING, SELECT, an alert's end, the scripts' rarer branches); the ACL test then runs
#: it under a user allowed only these.
LIBRARY_COMMANDS = (
    "del", "evalsha", "exec", "expire", "expireat", "get", "hdel", "hello", "hget", "hgetall", "hincrby",
    "hkeys", "hmget", "hset", "hsetnx", "multi", "pexpire", "ping", "psubscribe", "pttl", "publish",
    "punsubscribe", "script|load", "select", "set", "time", "type", "zadd", "zcard", "zrange",
    "zrangebyscore", "zrem", "zremrangebyrank", "zremrangebyscore", "zrevrange", "zscore",
)  # fmt: skip


def exercise(url: str, prefix: str = "glm_guard:") -> None:
    """Admission, cache, single flight, stats and alerts through ``url``, shared by two backends.

    A second run on the same server takes a ``prefix`` of its own, so it starts from nothing.
    """
    first, second = (RedisBackend(url, key_prefix=prefix, lease=2.0) for _ in range(2))
    try:
        _admission(first, second)
        _cache(first, second)
        _stats_and_alerts(first, second)
    finally:
        first.close()
        second.close()


def _admission(first: RedisBackend, second: RedisBackend) -> None:
    # rate: three starts a minute between both processes, sync and async
    mine = rate_limited(3, 60, key="rate", backend=first, max_wait=0)(lambda: None)
    theirs = rate_limited(3, 60, key="rate", backend=second, max_wait=0)(lambda: None)

    @rate_limited(3, 60, key="rate", backend=second, max_wait=0)
    async def theirs_async() -> None:
        return None

    mine()
    theirs()
    asyncio.run(theirs_async())
    with pytest.raises(RateLimitTimeout):
        mine()
    with pytest.raises(RateLimitTimeout):
        asyncio.run(theirs_async())

    # concurrency: one in flight between both
    other = rate_limited(concurrency=1, key="one", backend=second, max_wait=0)(lambda: None)

    waiter = rate_limited(concurrency=1, key="one", backend=second, max_wait=5)(lambda: None)
    waited = threading.Thread(target=waiter)  # woken by the release notice (pub/sub), or its poll

    @rate_limited(concurrency=1, key="one", backend=first, max_wait=0)
    def holder() -> None:
        with pytest.raises(RateLimitTimeout):
            other()
        waited.start()
        time.sleep(0.2)

    holder()
    waited.join(6)
    assert not waited.is_alive()
    other()  # given back

    # cooldown: a 1302 in one process holds the key back in the other
    @rate_limited(key="cool", calls=100, backend=first, cooldown=30)
    def limited() -> None:
        raise ErrorWithText(SEED_1302)

    with pytest.raises(ErrorWithText):
        limited()
    with pytest.raises(RateLimitTimeout):
        rate_limited(key="cool", calls=100, backend=second, max_wait=0.2)(lambda: None)()

    # a learned limit: a 1302 under concurrency="auto" cuts it for every process
    @rate_limited(concurrency=AutoConcurrency(initial=4), key="auto", backend=first)
    def learning(fail: bool) -> None:
        if fail:
            raise ErrorWithText(SEED_1302)

    learning(False)
    with pytest.raises(ErrorWithText):
        learning(True)
    assert second.learned_limits(["auto"])["auto"].limit == 1

    # a token budget: 100 a minute between both, reserved before a call and settled from its usage
    def spender(backend: RedisBackend, used: int) -> Any:
        return rate_limited(tokens=100, period=60, key="tokens", backend=backend, max_wait=0)(
            lambda: {"usage": {"total_tokens": used}}
        )

    with glm_guard.token_estimate(40):
        spender(first, 40)()
        spender(second, 10)()  # settled down to 10: 50 spent
        spender(first, 40)()  # 90
        with pytest.raises(RateLimitTimeout):
            spender(second, 40)()  # 130 would pass the budget

    # burst control: at most one start per 60 s between both, beside a larger rate
    rate_limited(10, 60, burst=(1, 60), key="burst", backend=first)(lambda: None)()
    with pytest.raises(RateLimitTimeout):
        rate_limited(10, 60, burst=(1, 60), key="burst", backend=second, max_wait=0)(lambda: None)()


def _cache(first: RedisBackend, second: RedisBackend) -> None:
    runs: list[str] = []
    gate = threading.Event()

    def body(question: str) -> str:
        runs.append(question)
        gate.wait(2)
        return question.upper()

    ask = [cached_response(60, key="shared", backend=backend)(body) for backend in (first, second)]
    answers: list[str] = []
    threads = [threading.Thread(target=lambda f=f: answers.append(f("q"))) for f in (*ask, *ask)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # every caller has asked: one computes, the others wait for its answer
    gate.set()
    for thread in threads:
        thread.join(10)
    assert answers == ["Q"] * 4 and runs == ["q"]

    @cached_response(60, key="shared", backend=second)
    async def body_async(question: str) -> str:
        runs.append(question)
        return question.upper()

    assert asyncio.run(body_async("q")) == "Q" and runs == ["q"]  # the other process's entry


def _stats_and_alerts(first: RedisBackend, second: RedisBackend) -> None:
    minute = int(time.time() // 60)
    first.shared_stats().add({minute: {"glm-4": {"calls": 2, "ok": 2}}})
    second.shared_stats().add({minute - 1: {"glm-4": {"calls": 3}}, minute: {"glm-5": {"calls": 1}}})
    totals = first.shared_stats().totals()  # also holds what the decorators above recorded
    assert totals["glm-4"] == {"calls": 5, "ok": 2} and totals["glm-5"] == {"calls": 1}
    assert second.shared_stats().window(minute - 1, minute)["glm-4"] == {"calls": 5, "ok": 2}
    stored = second.shared_stats()
    assert isinstance(stored, RedisSharedStats) and stored.fixed_limits() == {"one": 1}  # the flushes wrote it

    second.shared_stats().add({minute: {"hot": {"err.rate_limit.1302": 50, "attempts": 50}}})
    monitors = []
    for backend in (first, second):
        recorder = _recorder.Recorder()
        recorder.set_sink(backend.shared_stats())
        monitors.append(_alerts.AlertMonitor(recorder))
    reports = [monitor.check() for monitor in monitors]
    assert sorted(len([a for a in found if a.key == "hot"]) for found in reports) == [0, 1]


# -- the URLs -----------------------------------------------------------------------------------


def test_redis_url_schemes_name_what_redis_py_connects_to() -> None:
    from glm_guard._redis_url import redis_target

    target = redis_target("valkey+sentinel://u:pw@127.0.0.1:26379,[::1]/mymaster?db=2")
    assert target.kind == "sentinel" and target.service == "mymaster"
    assert target.urls == ("redis://u:pw@127.0.0.1:26379?db=2", "redis://u:pw@[::1]:26379?db=2")
    assert redis_target("redis+cluster://h1:7000,h2").urls == ("redis://h1:7000", "redis://h2:6379")
    assert redis_target("redis+sentinel://h:,[::1]:7/m").urls == ("redis://h:26379", "redis://[::1]:7")
    assert redis_target("valkeys://h:6380/0?ssl_cert_reqs=none").urls == ("rediss://h:6380/0?ssl_cert_reqs=none",)
    assert redis_target("redis+unix:///run/r.sock").urls == ("unix:///run/r.sock",)
    assert redis_target("valkey+unix:///run/r.sock").urls == ("unix:///run/r.sock",)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:26379", "must name the primary's service"),
        ("redis+sentinel://h:1,h:99999/m", "port must be from 1 to 65535"),
        ("redis+cluster://h:7000/2", "only database 0"),
        ("redis+cluster://h:7000?db=2", "query parameter"),
        ("redis+cluster://h:7000,,h2", "has no host"),
        ("redis+sentinel://h/m?ssl_certfile=/c.pem", "query parameter"),
        ("rediss+sentinel://h/m", "redis+sentinel://"),
        ("memcached://h", "valkey+cluster://"),
    ],
)
def test_a_bad_redis_url_fails_at_decoration_naming_the_known_schemes(url: str, problem: str) -> None:
    secret = url.replace("://", "://:hunter2-pw@", 1)
    with pytest.raises(ConfigurationError) as caught:
        rate_limited(3, backend=secret)
    assert problem in str(caught.value) and "hunter2-pw" not in str(caught.value)


@pytest.mark.parametrize("scheme", ["redis+sentinel", "redis+cluster"])
def test_sentinels_or_nodes_that_do_not_answer_are_an_outage_the_policy_serves_redis(scheme: str) -> None:
    nodes = f"127.0.0.1:{deploy.free_port()},127.0.0.1:{deploy.free_port()}"  # nobody listens there
    url = f"{scheme}://app:hunter2-pw@{nodes}" + ("/svc?db=1" if scheme == "redis+sentinel" else "")
    assert mask_url(url) == url.replace("hunter2-pw", "***")
    backend = RedisBackend(url, socket_timeout=0.2)

    @rate_limited(5, 60, key="down", backend=backend, on_backend_error="open")
    async def call() -> str:
        return "answered"

    try:
        assert "hunter2-pw" not in repr(backend)
        assert (
            rate_limited(5, 60, key="down", backend=backend, on_backend_error="open")(lambda: "answered")()
            == "answered"
        )
        assert asyncio.run(call()) == "answered"
        assert backend.outage_report()["outages"] == 1 and "hunter2-pw" not in str(backend.outage_report())
        with pytest.raises(glm_guard.BackendError) as caught:
            backend.connections.call(lambda client: client.ping())
        assert "hunter2-pw" not in str(caught.value)
    finally:
        backend.close()


def test_stats_older_releases_wrote_without_the_hash_tag_are_still_read_redis(redis_url: str) -> None:
    minute = int(time.time() // 60)
    with redis.Redis.from_url(redis_url) as client:
        client.hincrby("glm_guard:stats:total", "glm-4|calls", 4)
        client.hincrby(f"glm_guard:stats:m:{minute}", "glm-4|calls", 4)
    backend = RedisBackend(redis_url)
    backend.shared_stats().add({minute: {"glm-4": {"calls": 1}}})
    assert backend.shared_stats().totals() == {"glm-4": {"calls": 5}}
    assert backend.shared_stats().window(minute, minute) == {"glm-4": {"calls": 5}}
    backend.close()


# -- each deployment ----------------------------------------------------------------------------


def test_plain_redis_and_valkey_urls_run_everything_redis(redis_server: Any, redis_url: str) -> None:
    exercise(redis_url.replace("redis://", "valkey://", 1), "glm_guard:v:")


def test_tls_with_a_ca_and_client_certificates_runs_everything_redis() -> None:
    with deploy.tls_server() as url:
        exercise(url)
        exercise(url.replace("rediss://", "valkeys://", 1), "glm_guard:v:")
        plain = url.replace("rediss://", "redis://", 1).partition("?")[0]
        backend = RedisBackend(plain, socket_timeout=0.5)  # the TLS port refuses plain text
        with pytest.raises(glm_guard.BackendError) as caught:
            backend.connections.call(lambda client: client.ping())
        assert REDIS_PASSWORD not in str(caught.value)
        backend.close()


@pytest.mark.parametrize("scheme", ["redis+unix", "unix", "valkey+unix"])
def test_a_unix_socket_runs_everything_redis(scheme: str) -> None:
    with deploy.unix_server(scheme) as url:
        exercise(url)


def test_an_acl_user_with_only_the_documented_commands_runs_everything_redis() -> None:
    allowed = " ".join(f"+{command}" for command in LIBRARY_COMMANDS)
    rules = f"resetkeys ~glm_guard:* resetchannels &glm_guard:*:released -@all {allowed}"
    with deploy.acl_server("app", "app-pw", rules) as server:
        exercise(f"redis://app:app-pw@127.0.0.1:{server.port}/0")
        with server.client() as admin:
            denied = [entry for entry in admin.acl_log() if entry.get("username") == "app"]
        assert denied == []


def test_the_documented_command_list_holds_every_command_the_library_sends_redis() -> None:
    with deploy.acl_server("app", "app-pw", "~glm_guard:* &glm_guard:* +@all") as server:
        with server.client() as admin:
            admin.config_resetstat()
        exercise(f"redis://app:app-pw@127.0.0.1:{server.port}/0")
        sent = deploy.info_commands([server]) - {"config|resetstat", "info"}
    in_scripts = set()
    for source in _scripts.sources().values():
        in_scripts |= {name.lower() for name in re.findall(r"redis\.p?call\('([A-Za-z]+)'", source)}
    assert "psubscribe" in sent and "zadd" in in_scripts
    assert sent | in_scripts <= set(LIBRARY_COMMANDS)


@pytest.mark.multi_node
def test_a_sentinel_primary_runs_everything_and_survives_a_failover_redis() -> None:
    with deploy.sentinel_group() as group:
        exercise(group.url)
        exercise(group.url.replace("redis+sentinel://", "valkey+sentinel://", 1), "glm_guard:v:")
        backend = RedisBackend(group.url, socket_timeout=0.5)
        served: list[str] = []
        errors: list[BaseException] = []

        @rate_limited(1000, 60, key="ha", backend=backend, on_backend_error="local")
        def call() -> None:
            served.append("degraded" if glm_guard.is_degraded() else "redis")

        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    call()  # Redis, or the local policy during the switch
                except BaseException as error:
                    errors.append(error)
                time.sleep(0.01)

        runner = threading.Thread(target=traffic)
        runner.start()
        try:
            time.sleep(0.3)
            old, new = group.primary_port(), group.failover()
            assert new != old
            # Until Sentinel turns the old primary into a replica, connections opened before the
            # switch may still write there (Redis replicates asynchronously): those starts are lost.
            demoted = next(server for server in group.servers if server.port == old)
            with demoted.client() as client:
                deploy.until(lambda: client.info("replication")["role"] == "slave", "the old primary to follow")
            deploy.until(lambda: served[-1] == "redis" and backend.health.available(), "admission back on Redis")
        finally:
            stop.set()
            runner.join(10)
        assert errors == [] and served.count("redis") > 10

        @rate_limited(1000, 60, key="ha-after", backend=backend, on_backend_error="closed")
        def after() -> None:
            return None

        for _ in range(5):
            after()  # "closed": raises unless Redis admitted it
        # A key of its own: the starts of "ha" written across the switch may be lost, as documented.
        primary = group.primary_port()
        roles = {}
        for server in group.servers:
            with server.client() as client:
                roles[server.port] = (
                    client.info("replication")["role"],
                    client.zcard(backend.key("ha-after", "starts")),
                )
        assert primary == new and roles[new] == ("master", 5), roles  # admission is on the new primary
        backend.close()


@pytest.mark.multi_node
def test_a_three_primary_cluster_runs_everything_in_one_slot_per_limit_redis() -> None:
    with deploy.cluster() as url:
        exercise(url)
        exercise(url.replace("redis+cluster://", "valkey+cluster://", 1), "glm_guard:v:")
        backend = RedisBackend(url)
        stats_slot = {backend.connections.call(lambda c, k=k: c.keyslot(k)) for k in ("glm_guard:{stats}:total",
                      "glm_guard:{stats}:m:1", "glm_guard:{stats}:alerts")}  # fmt: skip
        limit_slot = {backend.connections.call(lambda c, k=k: c.keyslot(backend.key("rate", k))) for k in
                      ("starts", "leases", "cooldown", "learned", "paused", "retry_budget", "spent",
                       "spent_sizes", "burst")}  # fmt: skip
        assert len(stats_slot) == 1 and len(limit_slot) == 1
        backend.close()


def test_get_backend_reads_every_scheme_from_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "valkey+cluster://:hunter2-pw@127.0.0.1:1,127.0.0.1:2")
    glm_guard.reload_settings()
    backend = get_backend("redis")
    assert isinstance(backend, RedisBackend) and "hunter2-pw" not in repr(backend)
