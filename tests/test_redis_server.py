"""``glm_guard.testing.RedisServer``: the throw-away redis-server the tests and benchmarks share."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from glm_guard.testing import RedisServer

from .conftest import REDIS_PASSWORD, start_redis


def test_a_redis_server_answers_with_its_password_and_hides_it() -> None:
    server = start_redis()
    try:
        assert server.running
        assert server.url == f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
        assert REDIS_PASSWORD not in repr(server) and "running" in repr(server)
        with redis.Redis(port=server.port, retry=None) as stranger, pytest.raises(redis.AuthenticationError):
            stranger.ping()  # no password, no answer
        with server.client() as client:
            assert client.ping() is True
            assert client.config_get("save") == {"save": ""}  # nothing written to disk
            assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        server.stop()
    assert not server.running
    server.stop()  # twice is fine


def test_a_killed_redis_server_restarts_on_the_same_port() -> None:
    with RedisServer() as server:
        port = server.port
        with server.client() as client:
            client.set("k", "v")
        server.kill()
        assert not server.running
        with server.client() as client, pytest.raises(redis.ConnectionError):
            client.ping()
        server.start()
        assert server.port == port
        with server.client() as client:
            assert client.ping() is True
            assert client.get("k") is None  # no persistence: a crash loses everything


def test_a_paused_redis_server_does_not_answer_until_resumed() -> None:
    with RedisServer() as server, server.client(socket_timeout=0.2) as client:
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.resume()
        client.connection_pool.disconnect()  # the timed-out connection holds an unread reply
        assert client.ping() is True


def test_a_port_another_redis_server_holds_is_refused_with_the_reason() -> None:
    with RedisServer() as first:
        second = RedisServer(port=first.port)
        with pytest.raises(RuntimeError, match=rf"did not start on 127\.0\.0\.1:{first.port}: .*"):
            second.start()
        assert not second.running
        with first.client() as client:
            assert client.ping() is True  # the first one is untouched


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"password": ""}, "password"),
        ({"startup_timeout": 0}, "startup_timeout"),
    ],
)
def test_bad_redis_server_options_name_themselves(options: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RedisServer(**options)  # type: ignore[arg-type]


def test_a_missing_redis_server_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(FileNotFoundError, match="redis-server is not installed"):
        RedisServer()


def test_a_forked_child_leaving_normally_does_not_stop_the_parents_server() -> None:
    import os

    with RedisServer() as server:
        pid = os.fork()
        if pid == 0:
            server.stop()  # what the inherited exit hook does in the child
            os._exit(0)
        os.waitpid(pid, 0)
        assert server.running
        with server.client() as client:
            assert client.ping() is True
