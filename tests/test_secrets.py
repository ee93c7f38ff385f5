"""No secret ever shows: every form of REDIS_URL, the API key and the monitor token, swept at DEBUG.

One test drives everything that prints text (errors and their chained causes, log records and
their extras, reprs, ``stats()``, the CLI, the monitor's answers, the client's errors) with
secrets that each carry the marker ``kq7zv`` between every reserved character, then looks for
the marker in everything it captured: a secret cut at a ``/``, ``#``, ``?`` or ``@`` still
shows the marker in each of its pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import glm_guard
from glm_guard import cached_response, rate_limited
from glm_guard._client import get_llm_client
from glm_guard._config import Settings, mask_url
from glm_guard.backends import get_backend
from glm_guard.backends._redis import RedisBackend
from glm_guard.cli import main
from glm_guard.monitoring import LoggingSubscriber, Monitor
from glm_guard.monitoring._recorder import RECORDER
from glm_guard.monitoring._series import read_series
from glm_guard.monitoring._server import MonitorServer
from glm_guard.testing import run_simulator

from .conftest import RedisServer, free_port

MARK = "kq7zv"
PASSWORD = f"{MARK}1/{MARK}2#{MARK}3?{MARK}4@{MARK}5&w={MARK}6[{MARK}7]%{MARK}8"
ACL_PASSWORD = f"acl{MARK}/{MARK}:{MARK}"
WRONG_PASSWORD = f"wrong{MARK}/{MARK}#{MARK}"
API_KEY = f"sk-{MARK}-api"
TOKEN = f"tok-{MARK}-monitor"
CACHE_SECRET = f"hmac-{MARK}"


def quoted(secret: str) -> str:
    return urllib.parse.quote(secret, safe="")


def bad_urls() -> list[str]:
    """Redis URLs of every wrong shape, each holding a secret somewhere."""
    raw, enc = PASSWORD, quoted(PASSWORD)
    return [
        f"redis://:{raw}@127.0.0.1:6379/0",  # reserved characters not percent-encoded
        f"redis://default:{raw}@127.0.0.1:6379/0",
        f"redis://{raw}@127.0.0.1:6379/0",
        f"redis://:{enc}@127.0.0.1:99999/0",
        f"redis://:{enc}@127.0.0.1:6379/abc",
        f"redis://:{enc}@127.0.0.1:6379/0?db=x",
        f"redis://:{enc}@127.0.0.1:6379/0?socket_timeout=1e308",
        f"redis://:{enc}@127.0.0.1:6379/0?bogus={MARK}",
        f"redis://127.0.0.1:6379/0?password={raw}",
        f"redis://127.0.0.1:6379/0?password={enc}&{MARK}",
        f"redis://:{enc}@/0",
        f"redis://:{enc}@127.0.0.1:{MARK}/0",
        f"redis://:{enc}@[::1",
        f"redis://:{enc}@127.0.0.1:6379/0 x",
        f"redis://alice:{enc}@127.0.0.1:6379/0#{raw}",
        f"unix://:{enc}@",
        f"unix://:{enc}@127.0.0.1/tmp/redis.sock",
        f"http://:{enc}@127.0.0.1:6379/0",
        f"redis:/:{enc}@127.0.0.1:6379/0",
        f":{enc}@127.0.0.1:6379",
    ]


class Sweep:
    """Everything the test saw, to search for the marker at the end."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *values: object) -> None:
        self.texts.extend(value if isinstance(value, str) else repr(value) for value in values)

    def error(self, action: Callable[[], object], expected: type[BaseException] = Exception) -> BaseException:
        """Run ``action``, which must raise ``expected``; keep its message, repr and traceback."""
        with pytest.raises(expected) as caught:
            action()
        self.add(str(caught.value), repr(caught.value), "".join(traceback.format_exception(caught.value)))
        return caught.value

    def run(self, action: Callable[[], object]) -> object:
        """Run ``action``; keep its result, or its error if it raises."""
        try:
            result = action()
        except Exception as error:
            self.add(str(error), repr(error), "".join(traceback.format_exception(error)))
            return error
        self.add(result)
        return result

    def views(self) -> None:
        self.add(json.dumps(glm_guard.stats(), default=str), json.dumps(glm_guard.rate_limit_stats(5), default=str))
        self.add(json.dumps(read_series(RECORDER, 5), default=str))  # the monitor page's charts

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> None:
        with contextlib.suppress(SystemExit):
            self.run(lambda: main(list(argv)))
        out = capsys.readouterr()
        self.add(out.out, out.err)


def use_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """Set the environment and make the next ``get_settings()`` read it (it may be invalid)."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    glm_guard._config._settings = None


def guarded(url: str, key: str, policy: str = "local") -> tuple[Callable[[], str], Callable[[], Any]]:
    @rate_limited(5, 1.0, concurrency=2, key=key, backend=url, on_backend_error=policy)
    @cached_response(ttl=60, backend=url)
    def call() -> str:
        return "answer"

    @rate_limited(5, 1.0, concurrency=2, key=key, backend=url, on_backend_error=policy)
    async def call_async() -> str:
        return "answer"

    return call, lambda: asyncio.run(call_async())


@pytest.fixture
def secret_redis() -> Iterator[RedisServer]:
    """A server whose password holds every reserved character, and an ACL user with another."""
    with RedisServer(password=PASSWORD) as server:
        admin = server.client()
        admin.acl_setuser(
            "alice", enabled=True, passwords=[f"+{ACL_PASSWORD}"], keys=["*"], channels=["*"], commands=["+@all"]
        )
        admin.close()
        yield server


def test_no_secret_appears_in_any_error_log_repr_stat_or_cli_output(
    secret_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="glm_guard")
    unsubscribe = LoggingSubscriber().subscribe()
    sweep = Sweep()
    try:
        _bad_urls(sweep, monkeypatch, capsys)
        _a_real_server(sweep, secret_redis, monkeypatch, capsys)
        _the_client_and_the_monitor(sweep, monkeypatch)
    finally:
        unsubscribe()
    for record in caplog.records:
        sweep.add(record.getMessage(), *vars(record).values())
    sweep.add(caplog.text, *(record.exc_text or "" for record in caplog.records))
    out = capsys.readouterr()
    sweep.add(out.out, out.err)

    assert len(sweep.texts) > 300 and any("rate limit" in text or "answer" in text for text in sweep.texts)
    leaks = [text for text in sweep.texts if MARK in text.lower()]
    assert not leaks, f"a secret shows in {len(leaks)} text(s), e.g. {leaks[0][:300]!r}"


def _bad_urls(sweep: Sweep, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for url in bad_urls():
        _one_bad_url(sweep, url, monkeypatch, capsys)
    glm_guard.reload_settings()


def _one_bad_url(sweep: Sweep, url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Everywhere a URL is configured, and the CLI reading it: each error says why, none shows it."""
    sweep.add(mask_url(url))
    sweep.error(lambda: Settings.from_env({"REDIS_URL": url}), glm_guard.ConfigurationError)
    sweep.run(lambda: Settings.from_env({"GLM_API_BASE_URL": url, "GLM_GUARD_BACKEND": url}))
    sweep.error(lambda: RedisBackend(url), glm_guard.ConfigurationError)
    sweep.error(lambda: rate_limited(5, backend=url), glm_guard.ConfigurationError)
    sweep.error(lambda: cached_response(backend=url), glm_guard.ConfigurationError)
    sweep.error(lambda: get_backend(url), glm_guard.ConfigurationError)
    use_env(monkeypatch, GLM_GUARD_BACKEND=url)
    sweep.error(lambda: rate_limited(5), glm_guard.ConfigurationError)
    use_env(monkeypatch, GLM_GUARD_BACKEND="redis", REDIS_URL=url)
    sweep.error(glm_guard.reload_settings, glm_guard.ConfigurationError)
    sweep.cli(capsys, "stats")
    sweep.cli(capsys, "monitor", "--port", "0")
    monkeypatch.delenv("GLM_GUARD_BACKEND")
    monkeypatch.delenv("REDIS_URL")


def _a_real_server(
    sweep: Sweep, server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = server.port
    good = [
        server.url,  # the password percent-encoded after the empty user name
        f"redis://alice:{quoted(ACL_PASSWORD)}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password={quoted(PASSWORD)}",
    ]
    wrong = [
        f"redis://:{quoted(WRONG_PASSWORD)}@127.0.0.1:{port}/0",
        f"redis://alice:{quoted(WRONG_PASSWORD)}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password={quoted(WRONG_PASSWORD)}",
    ]
    monkeypatch.setenv("GLM_GUARD_CACHE_SECRET", CACHE_SECRET)
    for number, url in enumerate(good):
        call, call_async = guarded(url, f"good-{number}")
        assert (call(), call(), call_async()) == ("answer", "answer", "answer")
        backend = get_backend(url)
        assert backend.outage_report()["outages"] == 0  # type: ignore[attr-defined]
        sweep.add(backend, backend.outage_report(), backend.limiter(f"good-{number}"))  # type: ignore[attr-defined]
        use_env(monkeypatch, GLM_GUARD_BACKEND="redis", REDIS_URL=url, GLM_GUARD_REDIS_TIMEOUT="0.5")
        sweep.add(glm_guard.get_settings())
        sweep.cli(capsys, "stats")
        sweep.cli(capsys, "stats", "--json", "--window-minutes", "5")
    for number, url in enumerate(wrong):
        call, call_async = guarded(url, f"wrong-{number}")
        assert (call(), call_async()) == ("answer", "answer")  # served by the local policy
        closed, _ = guarded(url, f"wrong-closed-{number}", policy="closed")
        sweep.error(closed, glm_guard.BackendError)
        sweep.add(get_backend(url), get_backend(url).outage_report())  # type: ignore[attr-defined]
    sweep.views()
    server.kill()  # down: every good URL now fails over
    for number, url in enumerate(good):
        call, call_async = guarded(url, f"down-{number}")
        sweep.run(call)
        sweep.run(call_async)
        closed, closed_async = guarded(url, f"down-closed-{number}", policy="closed")
        sweep.error(closed, glm_guard.BackendError)
        sweep.error(closed_async, glm_guard.BackendError)
        sweep.add(get_backend(url), get_backend(url).outage_report())  # type: ignore[attr-defined]
        use_env(monkeypatch, GLM_GUARD_BACKEND="redis", REDIS_URL=url)
        sweep.cli(capsys, "stats")
    sweep.views()
    for command in ([], ["stats"], ["monitor"], ["demo"], ["simulate"]):
        sweep.cli(capsys, *command, "--help")


def _the_client_and_the_monitor(sweep: Sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    with run_simulator(api_keys=["another-key"], concurrency=2, latency=0.0) as sim:
        use_env(
            monkeypatch,
            GLM_API_KEY=API_KEY,
            GLM_API_BASE_URL=sim.base_url,
            GLM_GUARD_MAX_TRIES="1",
            GLM_GUARD_MONITOR_TOKEN=TOKEN,
            GLM_GUARD_BACKEND="local",
        )
        monkeypatch.delenv("REDIS_URL", raising=False)
        client = get_llm_client(sync=True)
        sweep.add(client, glm_guard.get_settings())
        sweep.run(lambda: client.call_api([{"role": "user", "content": "hi"}]))  # the key is refused: 401
        sweep.run(lambda: asyncio.run(get_llm_client().call_api([{"role": "user", "content": "hi"}])))
    use_env(monkeypatch, GLM_API_BASE_URL=f"http://127.0.0.1:{free_port()}/v4")
    sweep.run(lambda: get_llm_client(sync=True).call_api([{"role": "user", "content": "hi"}]))  # nothing listens
    use_env(monkeypatch, GLM_API_BASE_URL=f"https://user:{quoted(PASSWORD)}@127.0.0.1:1/v4")
    sweep.add(get_llm_client(sync=True), glm_guard.get_settings())
    sweep.views()

    server = MonitorServer(Monitor(), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}", timeout=5) as http:
            for auth in (None, "Bearer wrong", TOKEN, f"Bearer {TOKEN}x", f"Bearer {TOKEN}"):
                paths = ("stats", "rate-limit-stats", "series")
                for path in ("/", *(f"/api/v1/monitoring/{name}" for name in paths), "/metrics"):
                    response = http.get(path, headers={"Authorization": auth} if auth else {})
                    sweep.add(response.text, dict(response.headers))
            assert response.status_code == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
