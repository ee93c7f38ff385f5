"""The monitoring endpoints over real HTTP, /metrics through prometheus_client's parser, the CLI."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import glm_guard
from glm_guard import AutoConcurrency, rate_limited, retry_on_1302
from glm_guard.backends._local import LocalBackend
from glm_guard.backends._redis import RedisBackend
from glm_guard.monitoring import Monitor, create_app
from glm_guard.monitoring._recorder import RECORDER
from glm_guard.monitoring._server import MonitorServer

from .conftest import REDIS_PASSWORD
from .helpers import SEED_1302, ErrorWithText

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "机密提示词"
TOKEN = "monitor-t0ken-XYZ"
BAD_WINDOWS = ["-1", "abc", "0", "1441", "1.5", "", "60&window_minutes=5", "%2B5"]


pytestmark = pytest.mark.usefixtures("fresh_stats")  # conftest: empty stats for each test


@pytest.fixture
def traffic(local_backend: LocalBackend) -> None:
    """A few calls: answers, a retried 1302, a failure."""
    busy = [1]

    @retry_on_1302(max_tries=3, base_delay=0)
    @rate_limited(100, 1.0, key="glm-4", backend=local_backend, cooldown=0)
    def ask(prompt: str) -> dict[str, Any]:
        if prompt == "fail":
            raise ValueError("broken")
        if busy[0]:
            busy[0] -= 1
            raise ErrorWithText(SEED_1302)
        return {"text": "ok", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}

    for _ in range(3):
        ask(PROMPT)
    with pytest.raises(ValueError):
        ask("fail")


def start_server(monitor: Monitor, **bounds: Any) -> tuple[str, Any]:
    server = MonitorServer(monitor, "127.0.0.1", 0, **bounds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    base, server = start_server(create_app())
    with httpx.Client(base_url=base, timeout=5) as client:
        yield client
    server.shutdown()
    server.server_close()


def test_the_seeds_two_curl_lines_answer(http: httpx.Client, traffic: None) -> None:
    stats = http.get("/api/v1/monitoring/stats")
    assert stats.status_code == 200 and stats.headers["content-type"].startswith("application/json")
    data = stats.json()
    glm = data["keys"]["glm-4"]
    assert (glm["calls"], glm["successes"], glm["failures"], glm["errors_1302"], glm["retries"]) == (4, 3, 1, 1, 1)
    # The same numbers as stats(); the backends' health is live state that may move in between.
    expected = glm_guard.stats() | {"generated_at": data["generated_at"]}
    assert {k: v for k, v in data.items() if k != "backends"} == {k: v for k, v in expected.items() if k != "backends"}

    window = http.get("/api/v1/monitoring/rate-limit-stats?window_minutes=60")
    assert window.status_code == 200
    hour = window.json()
    assert hour["window_minutes"] == 60 and hour["keys"]["glm-4"]["errors_1302_per_hour"] == 1.0
    assert hour["keys"]["glm-4"]["success_rate"] == 0.75
    assert hour["thresholds"] == {"errors_1302_per_hour": 1, "min_success_rate": 0.995}
    assert http.get("/api/v1/monitoring/rate-limit-stats").json()["window_minutes"] == 60
    assert http.get("/api/v1/monitoring/rate-limit-stats?window_minutes=1440").status_code == 200
    for response in (stats, window):
        assert PROMPT not in response.text and "broken" not in response.text


@pytest.mark.parametrize("value", BAD_WINDOWS)
def test_bad_windows_are_a_400_with_a_json_error(http: httpx.Client, value: str) -> None:
    response = http.get(f"/api/v1/monitoring/rate-limit-stats?window_minutes={value}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == 400 and "window_minutes" in error["message"] and "1440" in error["message"]


def test_unknown_paths_and_methods(http: httpx.Client) -> None:
    assert http.get("/api/v1/monitoring/nope").status_code == 404
    post = http.post("/api/v1/monitoring/stats", content=b"{}")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    head = http.head("/api/v1/monitoring/stats")
    assert head.status_code == 200 and head.content == b""
    assert http.get("/api/v1/monitoring/stats/").status_code == 200  # a trailing slash is the same path


def test_a_bearer_token_protects_all_but_healthz(monkeypatch: pytest.MonkeyPatch, traffic: None) -> None:
    monkeypatch.setenv("GLM_GUARD_MONITOR_TOKEN", TOKEN)
    glm_guard.reload_settings()
    base, server = start_server(create_app())
    try:
        with httpx.Client(base_url=base, timeout=5) as client:
            for path in ("/api/v1/monitoring/stats", "/api/v1/monitoring/rate-limit-stats", "/metrics"):
                bare = client.get(path)
                assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
                assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
                assert client.get(path, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
                good = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert good.status_code == 200 and TOKEN not in good.text
                assert TOKEN not in bare.text
            assert client.get("/healthz").status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_parse_with_prometheus_clients_own_parser(http: httpx.Client, traffic: None) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in families.values() for s in family.samples
    }
    key = (("key", "glm-4"),)
    assert samples[("glm_guard_calls_total", (*key, ("outcome", "success")))] == 3
    assert samples[("glm_guard_calls_total", (*key, ("outcome", "error")))] == 1
    assert samples[("glm_guard_attempts_total", key)] == 5
    assert samples[("glm_guard_attempt_errors_total", (("code", "1302"), *key, ("kind", "rate_limit")))] == 1
    assert samples[("glm_guard_attempt_errors_total", (("code", ""), *key, ("kind", "other")))] == 1
    assert samples[("glm_guard_retries_total", key)] == 1
    assert samples[("glm_guard_tokens_total", (*key, ("type", "total")))] == 21
    assert samples[("glm_guard_errors_1302_last_hour", key)] == 1
    assert samples[("glm_guard_success_rate_last_hour", key)] == 0.75
    histogram = families["glm_guard_call_duration_seconds"]
    assert histogram.type == "histogram"
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf" and counts[-1] == 4
    assert samples[("glm_guard_call_duration_seconds_count", key)] == 4
    assert PROMPT not in response.text


def cut_twice(backend: LocalBackend | RedisBackend, key: str) -> int | None:
    """An answer, two 1302s and an answer under ``concurrency="auto"``; returns the limit learned."""

    @rate_limited(concurrency=AutoConcurrency(initial=4), key=key, backend=backend)
    def ask(fail: bool) -> None:
        if fail:
            raise ErrorWithText(SEED_1302)

    for fail in (False, True, True, False):
        with contextlib.suppress(ErrorWithText):
            ask(fail)
    return backend.limiter(key).learned_limit()


def test_metrics_show_the_learned_limit_and_its_cuts(http: httpx.Client, local_backend: LocalBackend) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    try:
        learned = cut_twice(local_backend, "glm-auto")
        text = http.get("/metrics").text
    finally:
        local_backend.close()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    # Other tests' backends may still be alive with keys of their own: this test reads its key's.
    (limit,) = [s for s in families["glm_guard_learned_concurrency_limit"].samples if s.labels["key"] == "glm-auto"]
    assert families["glm_guard_learned_concurrency_limit"].type == "gauge"
    assert (limit.labels, limit.value) == ({"key": "glm-auto"}, learned) and learned == 2
    (cuts,) = [s for s in families["glm_guard_learned_limit_cuts"].samples if s.labels["key"] == "glm-auto"]
    assert (cuts.name, cuts.labels, cuts.value) == ("glm_guard_learned_limit_cuts_total", {"key": "glm-auto"}, 2)


def test_metrics_without_prometheus_client_is_a_501(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "glm_guard.monitoring._prometheus", None)  # import fails
    response = create_app().handle("GET", "/metrics")
    assert response.status == 501 and b"prometheus" in response.body


async def test_the_asgi_app_answers_the_same(traffic: None) -> None:
    transport = httpx.ASGITransport(app=glm_guard.monitoring.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as client:
        stats = await client.get("/api/v1/monitoring/stats")
        assert stats.status_code == 200 and stats.json()["keys"]["glm-4"]["calls"] == 4
        assert stats.headers["cache-control"] == "no-store"
        bad = await client.get("/api/v1/monitoring/rate-limit-stats", params={"window_minutes": "-1"})
        assert bad.status_code == 400 and "window_minutes" in bad.json()["error"]["message"]
        assert (await client.get("/healthz")).json() == {
            "status": "ok",
            "source": "process",
            "backend_reachable": True,
        }
        metrics = await client.get("/metrics")
        if importlib.util.find_spec("prometheus_client") is None:
            assert metrics.status_code == 501
        else:
            assert b"glm_guard_calls_total" in metrics.content


async def test_the_asgi_app_mounted_under_a_prefix(traffic: None) -> None:
    mounted = create_app(prefix="", token=TOKEN)
    transport = httpx.ASGITransport(app=mounted, root_path="/api/v1/monitoring")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get("/api/v1/monitoring/rate-limit-stats?window_minutes=5", headers=headers)
        assert response.status_code == 200 and response.json()["window_minutes"] == 5
        assert (await client.get("/api/v1/monitoring/stats")).status_code == 401
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mounted({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    with pytest.raises(glm_guard.ConfigurationError):
        create_app(prefix="no-slash")


def test_healthz_reports_redis_reachable_or_not_redis(redis_url: str) -> None:
    live = RedisBackend(redis_url)
    dead = RedisBackend(f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0", socket_timeout=0.2)
    up = Monitor(source=live.shared_stats()).handle("GET", "/healthz")
    down = Monitor(source=dead.shared_stats()).handle("GET", "/healthz")
    assert up.status == 200 and json.loads(up.body)["backend_reachable"] is True
    assert down.status == 503 and json.loads(down.body) == {
        "status": "unavailable",
        "source": "redis",
        "backend_reachable": False,
    }
    stats = Monitor(source=dead.shared_stats()).handle("GET", "/api/v1/monitoring/stats")
    assert stats.status == 200 and json.loads(stats.body)["source"] == "process"  # this process, flagged
    for response in (up, down, stats):
        assert REDIS_PASSWORD.encode() not in response.body
    live.close()
    dead.close()


# -- the server's bounds --------------------------------------------------------------------------

PARTIAL_REQUESTS = [b"", b"GET /api/v1/moni", b"GET /api/v1/monitoring/stats HTTP/1.1\r\nHost: monitor\r\n"]


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (called once it is readable): EOF or a reset."""
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


@pytest.mark.parametrize("max_connections", [64, 512], ids=["evicting", "holding-all"])
def test_idle_connections_hold_no_thread_and_lock_out_no_request(max_connections: int) -> None:
    """300 clients that send nothing or half a request: real requests still answer, threads stay few.

    With room for 64 connections the longest-waiting ones are closed as new ones come; with
    room for 512 all 300 stay open until the request timeout, and still cost no thread.
    """
    threads_before = threading.active_count()
    base, server = start_server(create_app(), request_timeout=1.0, max_connections=max_connections, workers=2)
    port = server.server_address[1]
    idle = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(PARTIAL_REQUESTS[i % 3])
            idle.append(sock)
        opened = time.monotonic()
        with httpx.Client(base_url=base, timeout=5) as client:  # answers while the idle ones are open
            answers = [client.get("/api/v1/monitoring/stats").status_code for _ in range(5)]
        assert answers == [200] * 5
        assert threading.active_count() <= threads_before + 1 + 2 + 2  # the loop, 2 workers, slack
        with selectors.DefaultSelector() as selector:
            for sock in idle:
                selector.register(sock, selectors.EVENT_READ)
            still_open = set(idle)
            while still_open and time.monotonic() - opened < 10:
                for ready, _ in selector.select(timeout=0.5):
                    sock = ready.fileobj
                    assert isinstance(sock, socket.socket)
                    if closed_by_peer(sock):
                        selector.unregister(sock)
                        still_open.discard(sock)
        assert not still_open, f"{len(still_open)} idle connections still open after 10 s"
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_a_client_trickling_its_request_is_dropped_after_the_request_timeout() -> None:
    """Slowloris: a byte every 50 ms keeps each read short, but the whole request has 1 s."""
    _, server = start_server(create_app(), request_timeout=1.0)
    request = b"GET /api/v1/monitoring/stats HTTP/1.1\r\nX-Slow: " + b"a" * 1000
    sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
    started = time.monotonic()
    dropped_after = None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            for byte in request:
                if time.monotonic() - started > 6:
                    break
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    dropped_after = time.monotonic() - started
                    break
                if selector.select(timeout=0.05) and closed_by_peer(sock):
                    dropped_after = time.monotonic() - started
                    break
    finally:
        sock.close()
        server.shutdown()
        server.server_close()
    assert dropped_after is not None, "a trickling client was still connected after 6 s"
    assert 0.5 <= dropped_after <= 4.0


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_server_speaks_http_1_1_and_refuses_malformed_requests() -> None:
    _, server = start_server(create_app(), request_timeout=2.0)
    port = server.server_address[1]
    host = b"Host: monitor\r\n"
    try:
        two = exchange(
            port,
            b"GET /healthz HTTP/1.1\r\n"
            + host
            + b"\r\nHEAD /healthz HTTP/1.1\r\n"
            + host
            + b"Connection: close\r\n\r\n",
        )
        assert two.count(b"HTTP/1.1 200 OK") == 2 and two.endswith(b"Connection: close\r\n\r\n")  # HEAD: no body
        old = exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")  # HTTP/1.0 closes after one answer
        assert old.startswith(b"HTTP/1.1 200 OK") and b'"status": "ok"' in old
        next_request = b"GET /healthz HTTP/1.0\r\n\r\n"
        for body in (b"Content-Length: 3\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"):
            answers = exchange(port, b"POST /healthz HTTP/1.1\r\n" + host + body + next_request)
            assert answers.startswith(b"HTTP/1.1 405") and b"HTTP/1.1 200 OK" in answers  # the body was read past
        big_head = exchange(port, b"GET /healthz HTTP/1.0\r\nX: " + b"a" * 15000 + b"\r\n\r\n")
        assert big_head.startswith(b"HTTP/1.1 200 OK")  # under the 16 KiB head limit, even arriving at once
        refused = {
            b"GARBAGE\r\n\r\n": b"400",
            b"GET / HTTP/1.1\r\n\r\n": b"400",  # HTTP/1.1 requires a Host header
            b"GET / HTTP/2.0\r\n" + host + b"\r\n": b"505",
            b"GET / HTTP/1.1\r\n" + host + b"Content-Length: -1\r\n\r\n": b"400",
            b"GET / HTTP/1.1\r\n" + host + b"Content-Length: \xb2\r\n\r\n": b"400",  # a digit to str.isdigit
            b"GET / HTTP/1.1\r\n" + host + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n": b"400",
            b"GET / HTTP/1.1\r\n" + host + b"X: " + b"a" * 20000 + b"\r\n\r\n": b"431",
            b"GET / HTTP/1.1\r\n" + host + b"X: a\r\n" * 100 + b"\r\n": b"431",
            b"GET / HTTP/1.1\r\n" + host + b"Authorization: Bearer a\r\n" * 2 + b"\r\n": b"400",
        }
        for request, status in refused.items():
            answer = exchange(port, request)
            assert answer.startswith(b"HTTP/1.1 " + status) and b'"error"' in answer, (request[:40], answer[:80])
            assert b"Bearer a" not in answer  # the refused request is not quoted back
    finally:
        server.shutdown()
        server.server_close()


def test_bad_server_bounds_are_refused_at_construction() -> None:
    for bounds in ({"request_timeout": 0}, {"max_connections": 0}, {"workers": True}):
        with pytest.raises(glm_guard.ConfigurationError):
            MonitorServer(create_app(), "127.0.0.1", 0, **bounds)


# -- the commands ---------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glm_guard", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def seed_redis(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    minute = int(RECORDER.clock() // 60)
    fields = {"calls": 10, "successes": 9, "failures": 1, "attempts": 12, "err.rate_limit.1302": 2, "retries": 2}
    backend.shared_stats().add({minute: {"glm-4": fields}})
    backend.close()


def test_stats_command_prints_redis_numbers_redis(redis_url: str) -> None:
    seed_redis(redis_url)
    env = {"REDIS_URL": redis_url}
    as_json = run_cli("stats", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["source"] == "redis" and data["keys"]["glm-4"]["errors_1302"] == 2
    table = run_cli("stats", "--window-minutes", "60", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "last 60 min" in lines[0] and lines[1].split()[:3] == ["KEY", "CALLS", "SUCCESS"]
    assert lines[2].split()[:3] == ["glm-4", "10", "90.00%"]
    assert any(line.startswith("ALERT") for line in lines)  # 2 1302s in the hour > 1, and 90% < 99.5%
    assert REDIS_PASSWORD not in table.stdout + as_json.stdout + table.stderr
    bad = run_cli("stats", "--window-minutes", "0", env=env)
    assert bad.returncode == 2 and "window_minutes" in bad.stderr


def test_stats_command_prints_the_fleets_learned_limit_redis(redis_url: str) -> None:
    worker = RedisBackend(redis_url)  # a worker process: it shares its stats and its learned limit
    try:
        glm_guard.configure_stats(backend=worker)
        learned = cut_twice(worker, "glm-auto")
        RECORDER.sync()
    finally:
        worker.close()
    env = {"REDIS_URL": redis_url}
    as_json = run_cli("stats", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    block = json.loads(as_json.stdout)["keys"]["glm-auto"]
    assert (block["calls"], block["learned_limit"], block["limit_cuts"]) == (4, learned, 2) and learned == 2
    table = run_cli("stats", env=env)
    assert table.returncode == 0, table.stderr
    header, row, total = table.stdout.splitlines()[1:4]
    assert header.split()[-2:] == ["LIMIT", "CUTS"]
    assert row.split()[0] == "glm-auto" and row.split()[-2:] == ["2", "2"]
    assert total.split()[-2:] == ["-", "-"]
    assert REDIS_PASSWORD not in table.stdout + as_json.stdout


def test_monitor_command_serves_the_endpoints_redis(redis_url: str) -> None:
    seed_redis(redis_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "glm_guard", "monitor", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert "stats from Redis" in banner and REDIS_PASSWORD not in banner
        base = banner.split()[3].rstrip(",")
        with httpx.Client(base_url=base, timeout=5) as client:
            stats = client.get("/api/v1/monitoring/stats")
            window = client.get("/api/v1/monitoring/rate-limit-stats?window_minutes=60")
            assert stats.json()["keys"]["glm-4"]["calls"] == 10
            assert window.json()["keys"]["glm-4"]["errors_1302_per_hour"] == 2.0
            assert client.get("/healthz").json()["backend_reachable"] is True
            assert REDIS_PASSWORD not in stats.text + window.text
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_a_monitor_of_its_own_draws_the_workers_fixed_limit_redis(redis_url: str) -> None:
    """``concurrency=3`` is known only to the worker's decorator: its stats flush carries it to Redis,
    where ``glm-guard monitor`` in another process reads it for the in-flight chart."""
    worker = RedisBackend(redis_url)
    try:
        glm_guard.configure_stats(backend=worker)

        @rate_limited(concurrency=3, key="fleet-fixed", backend=worker)
        def call() -> str:
            return "answer"

        assert [call() for _ in range(2)] == ["answer"] * 2
        RECORDER.sync()
    finally:
        worker.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "glm_guard", "monitor", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url, "GLM_API_MAX_CONCURRENCY": ""},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base = process.stdout.readline().split()[3].rstrip(",")
        with httpx.Client(base_url=base, timeout=5) as client:
            block = client.get("/api/v1/monitoring/stats").json()["keys"]["fleet-fixed"]
            series = client.get("/api/v1/monitoring/series?window_minutes=15").json()["keys"]["fleet-fixed"]
        assert (block["calls"], block["concurrency_limit"], block["learned_limit"]) == (2, 3, None)
        assert series["limit"] == {"value": 3, "kind": "fixed"}
    finally:
        process.terminate()
        process.communicate(timeout=10)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts threads through /proc")
def test_the_monitor_command_drops_idle_connections_and_keeps_few_threads() -> None:
    """The issue's case, end to end: 300 half-sent requests to ``glm-guard monitor``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "glm_guard", "monitor", "--port", "0", "--request-timeout", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    idle = []
    try:
        assert process.stdout is not None
        base = process.stdout.readline().split()[3].rstrip(",")
        port = int(base.rsplit(":", 1)[1])
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(PARTIAL_REQUESTS[i % 3])
            idle.append(sock)
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.get("/api/v1/monitoring/stats").status_code == 200
        status = Path(f"/proc/{process.pid}/status").read_text()
        threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
        assert threads <= 12  # the main thread, the stats thread, a few workers: not one per connection
        time.sleep(2.5)  # past the request timeout, with slack
        for sock in idle:
            sock.settimeout(5)
            assert closed_by_peer(sock)
    finally:
        for sock in idle:
            sock.close()
        process.terminate()
        process.communicate(timeout=10)
