"""Shared fixtures: clean settings, a fresh backend per test, and real redis-servers.

``backend`` is the matrix: a test that takes it runs once on the local backend and once on
a real Redis (test ids ``[local]`` and ``[redis]``), as limits' tests run over its storages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

import glm_guard
from glm_guard import _config, backends
from glm_guard.backends._base import Backend
from glm_guard.backends._local import LocalBackend
from glm_guard.backends._redis import RedisBackend
from glm_guard.monitoring._recorder import RECORDER
from glm_guard.testing import RedisServer
from glm_guard.testing._redis_server import free_port

__all__ = ["REDIS_PASSWORD", "RedisServer", "free_port"]  # test modules import these from here

REDIS_PASSWORD = "s3cret-test-pw"
REQUIRE_REDIS = os.environ.get("GLM_GUARD_REQUIRE_REDIS") == "1"


@pytest.fixture(autouse=True)
def _clean_global_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("GLM_API_", "GLM_GUARD_")) or name == "REDIS_URL":
            monkeypatch.delenv(name, raising=False)
    glm_guard.reload_settings()
    yield
    glm_guard.set_testing(False)
    RECORDER.forget_backends()  # a backend a test named must not receive the next test's stats
    backends.reset_backends()
    _config._settings = None  # re-read lazily, after monkeypatch has restored the environment


@pytest.fixture
def local_backend() -> LocalBackend:
    """A backend of its own, so no limit history leaks between tests."""
    return LocalBackend()


def start_redis() -> RedisServer:
    """A started server with the tests' password; a missing binary skips, or fails when required."""
    try:
        return RedisServer(password=REDIS_PASSWORD).start()
    except FileNotFoundError:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not installed but GLM_GUARD_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop, pause, kill and restart."""
    with start_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a flushed database on the session's redis-server."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The matrix: the same test on a fresh local backend and on a real, flushed Redis."""
    if request.param == "local":
        yield LocalBackend()
        return
    shared = RedisBackend(request.getfixturevalue("redis_url"), lease=2.0)
    yield shared
    shared.close()


class LimiterState:
    """What a backend holds for a rate-limit key, read where the backend keeps it.

    Local: the limiter's state.  Redis: the key's sorted sets, whose names and meaning
    docs/distributed.md documents (``P{K}:starts``, ``P{K}:leases``).
    """

    def __init__(self, backend: Backend, client: redis.Redis | None) -> None:
        self._backend = backend
        self._client = client
        self._prefix = glm_guard.get_settings().key_prefix

    def in_flight(self, key: str) -> int:
        """Concurrency permits of ``key`` held right now."""
        if isinstance(self._backend, LocalBackend):
            return self._backend._limiters[key].state.in_flight
        assert self._client is not None
        return int(self._client.zcard(f"{self._prefix}{{{key}}}:leases"))

    def starts(self, key: str) -> int:
        """Admissions of ``key`` still inside its window."""
        if isinstance(self._backend, LocalBackend):
            return len(self._backend._limiters[key].state.starts)
        assert self._client is not None
        return int(self._client.zcard(f"{self._prefix}{{{key}}}:starts"))


@pytest.fixture
def limiter_state(backend: Backend, request: pytest.FixtureRequest) -> Iterator[LimiterState]:
    if isinstance(backend, LocalBackend):
        yield LimiterState(backend, None)
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield LimiterState(backend, client)
    client.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "xfail_on(backend, reason): a known difference of one backend of the matrix; strict xfail there",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        for mark in item.iter_markers("xfail_on"):
            if params is not None and params.params.get("backend") == mark.args[0]:
                item.add_marker(pytest.mark.xfail(strict=True, reason=mark.kwargs["reason"]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    # A strict xfail ran and failed as its reason says: that is not a skipped Redis test.
    if REQUIRE_REDIS and report.skipped and "redis" in item.name and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"Redis test {item.name} was skipped, but GLM_GUARD_REQUIRE_REDIS=1"


@pytest.fixture
def fresh_stats(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Empty stats, recorded in this thread only (the monitor page's and the dashboards' tests)."""
    RECORDER.stop(join=True)
    monkeypatch.setattr(RECORDER, "start", lambda: None)
    RECORDER.set_sink(None)
    RECORDER.reset()
    RECORDER.set_recording(True)
    yield
    RECORDER.set_sink(None)
    RECORDER.reset()


@pytest.fixture
def traffic_backend() -> Iterator[LocalBackend]:
    """The traffic's backend, closed after the test: its learned limit must not reach another test's views."""
    backend = LocalBackend()
    yield backend
    backend.close()
