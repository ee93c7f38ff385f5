"""Shared fixtures: a fresh local backend per test, a real redis-server, clean settings."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

import glm_guard
from glm_guard import _config, backends
from glm_guard.backends._local import LocalBackend
from glm_guard.monitoring._recorder import RECORDER

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server process on a free loopback port, with a password."""

    def __init__(self, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.dir = tempfile.mkdtemp(prefix="glm-guard-redis-")
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                REDIS_PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(f"AUTH {REDIS_PASSWORD}\r\nPING\r\n".encode())
                    if b"PONG" in sock.recv(64):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        self.process.kill()
        self.process.wait(5)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except FileNotFoundError:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not installed but GLM_GUARD_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not installed")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop, pause, kill and restart."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a flushed database on the session's redis-server."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_REDIS and report.skipped and "redis" in item.name:
        report.outcome = "failed"
        report.longrepr = f"Redis test {item.name} was skipped, but GLM_GUARD_REQUIRE_REDIS=1"
