"""Contract tests for glm_guard.testing: the GLM simulator, its pytest fixture and CLI.

Every request goes to 127.0.0.1 and every wait is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import zhipuai

import glm_guard.testing as gt
from glm_guard.cli import main
from glm_guard.cli._simulate import add_arguments
from glm_guard.testing import (
    GLM_ERRORS,
    GLMSimulator,
    SimulatorConfig,
    mask_key,
    run_simulator,
)
from glm_guard.testing import pytest_plugin as plugin

# The plugin is opt-in, so this module takes its fixture explicitly rather than
# relying on a conftest; the marker form is covered by a pytest subprocess below.
glm_simulator = plugin.glm_simulator

KEY = "sk-test-0123456789abcdef"
MODEL = "glm-4-flash"
TIMEOUT = 5.0
REPO_ROOT = Path(gt.__file__).resolve().parents[2]
MSG_1302 = "您的账户已达到速率限制，请您控制请求频率"


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def _post(sim: GLMSimulator, key: str | None = KEY, **extra: Any) -> httpx.Response:
    headers = _auth(key) if key is not None else {}
    return httpx.post(sim.chat_url, headers=headers, json=_body(**extra), timeout=TIMEOUT)


def _sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def sim() -> Iterator[GLMSimulator]:
    with run_simulator(latency=0.0, stream_chunk_delay=0.0) as s:
        yield s


# -- basic contract -----------------------------------------------------------------


def test_success_shape_usage_and_determinism(sim: GLMSimulator) -> None:
    r = _post(sim, text="what is 2+2?")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert "retry-after" not in r.headers
    data = r.json()
    assert set(data) >= {"id", "request_id", "created", "model", "choices", "usage"}
    assert data["model"] == MODEL
    assert isinstance(data["created"], int)
    (choice,) = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "what is 2+2?" in choice["message"]["content"]
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Same request, same answer; different request, different answer (for cache tests).
    again = _post(sim, text="what is 2+2?").json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    assert again["id"] != data["id"]
    other = _post(sim, text="what is 3+3?").json()
    assert other["choices"][0]["message"]["content"] != choice["message"]["content"]


def test_request_id_echo_max_tokens_and_responder() -> None:
    with run_simulator(latency=0, responder=lambda body: "x" * 100) as s:
        r = _post(s, request_id="my-req-1", max_tokens=5).json()
        assert r["request_id"] == "my-req-1"
        assert r["choices"][0]["finish_reason"] == "length"
        assert r["choices"][0]["message"]["content"] == "x" * 20
        assert r["usage"]["completion_tokens"] == 5


def test_base_url_properties_and_repr(sim: GLMSimulator) -> None:
    assert sim.host == "127.0.0.1"
    assert sim.port > 0
    assert sim.base_url == f"http://127.0.0.1:{sim.port}/api/paas/v4"
    assert sim.chat_url == sim.base_url + "/chat/completions"
    assert sim.running
    assert str(sim.port) in repr(sim)
    with pytest.raises(RuntimeError):
        _ = GLMSimulator().port


def test_keys_are_masked_in_reprs() -> None:
    secret = "sk-very-secret-key-9999"
    with run_simulator(api_keys=[secret], latency=0) as s:
        assert _post(s, key=secret).status_code == 200
        for text in (repr(s), repr(s.config), repr(s.stats), repr(s.history())):
            assert secret not in text
        assert mask_key(secret) in repr(s.config)
        assert mask_key(secret) == "****9999"
        assert mask_key("short") == "****"


def test_other_paths_and_methods(sim: GLMSimulator) -> None:
    base = f"http://127.0.0.1:{sim.port}"
    r = httpx.post(f"{base}/api/paas/v4/nope", headers=_auth(), json={}, timeout=TIMEOUT)
    assert r.status_code == 404
    r = httpx.get(sim.chat_url, headers=_auth(), timeout=TIMEOUT)
    assert r.status_code == 405
    # The Coding-Plan path is served too.
    coding = f"{base}/api/coding/paas/v4/chat/completions"
    assert httpx.post(coding, headers=_auth(), json=_body(), timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "1210"),
        (b"[1, 2]", "1210"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "1214"),
        (json.dumps({"model": MODEL, "messages": []}).encode(), "1214"),
    ],
)
def test_invalid_bodies(sim: GLMSimulator, payload: bytes, code: str) -> None:
    r = httpx.post(
        sim.chat_url,
        headers={**_auth(), "Content-Type": "application/json"},
        content=payload,
        timeout=TIMEOUT,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code
    assert sim.stats.rejected == {code: 1}
    assert sim.stats.admitted == 0


def test_unknown_model_when_models_configured() -> None:
    with run_simulator(models=["glm-4.6"], latency=0) as s:
        r = _post(s)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "1211"


def test_keep_alive_and_chunked_request_body(sim: GLMSimulator) -> None:
    """Two requests on one raw socket: the second has a chunked body."""
    body = json.dumps(_body("raw")).encode()
    first = (
        f"POST /api/paas/v4/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    second = (
        f"POST /api/paas/v4/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT) as conn:
        conn.sendall(first)
        conn.sendall(second)
        received = b""
        while chunk := conn.recv(65536):  # server closes after the second (Connection: close)
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert b"Connection: keep-alive" in received
    assert b"Connection: close" in received
    assert sim.stats.completed == 2


# -- auth -----------------------------------------------------------------------------


def test_missing_auth_is_1001(sim: GLMSimulator) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        r = httpx.post(sim.chat_url, headers=headers, json=_body(), timeout=TIMEOUT)
        assert r.status_code == 401
        assert r.json() == {"error": {"code": "1001", "message": GLM_ERRORS["1001"][1]}}
    assert sim.stats.rejected == {"1001": 3}


def test_unknown_key_is_1002_when_keys_configured() -> None:
    with run_simulator(api_keys={"good-key-1234"}, latency=0) as s:
        r = _post(s, key="bad-key-5678")
        assert r.status_code == 401
        assert r.json() == {
            "error": {
                "code": "1002",
                "message": "Authorization Token非法，请确认Authorization Token正确传递。",
            }
        }
        assert _post(s, key="good-key-1234").status_code == 200


def test_any_key_accepted_without_configured_keys(sim: GLMSimulator) -> None:
    assert _post(sim, key="anything").status_code == 200


# -- concurrency and rate limits ---------------------------------------------------


async def test_concurrency_limit_admits_exactly_limit() -> None:
    limit, n = 2, 7
    with run_simulator(concurrency=limit, latency=0.4) as s:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            responses = await asyncio.gather(
                *(client.post(s.chat_url, headers=_auth(), json=_body(f"q{i}")) for i in range(n))
            )
        ok = [r for r in responses if r.status_code == 200]
        limited = [r for r in responses if r.status_code == 429]
        assert len(ok) == limit
        assert len(limited) == n - limit
        for r in limited:
            assert r.json() == {"error": {"code": "1302", "message": MSG_1302}}
            assert isinstance(r.json()["error"]["code"], str)
            assert "retry-after" not in r.headers
        st = s.stats
        assert st.peak_in_flight == limit
        assert st.peak_for(KEY, MODEL) == limit
        assert st.admitted == st.completed == limit
        assert st.rejected == {"1302": n - limit}
        assert st.in_flight == 0
        assert st.total_requests == n


async def test_limit_is_per_key_and_model_with_overrides() -> None:
    with run_simulator(concurrency=1, model_concurrency={"glm-4.6": 2}, latency=0.3) as s:
        pairs = [
            ("key-aaaa-1", MODEL),
            ("key-bbbb-2", MODEL),
            ("key-aaaa-1", "glm-4-air"),
        ]
        pairs += [("key-aaaa-1", "glm-4.6")] * 3
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            responses = await asyncio.gather(
                *(client.post(s.chat_url, headers=_auth(k), json={**_body(), "model": m}) for k, m in pairs)
            )
        codes = [r.status_code for r in responses]
        assert codes[:3] == [200, 200, 200]
        assert sorted(codes[3:]) == [200, 200, 429]
        st = s.stats
        assert st.peak_for("key-aaaa-1", "glm-4.6") == 2
        assert st.peak_for("key-bbbb-2", MODEL) == 1
        assert st.peak_in_flight == 5


def test_rate_window_answers_1302_then_recovers() -> None:
    with run_simulator(concurrency=None, rate=(2, 0.4), latency=0) as s:
        assert [_post(s).status_code for _ in range(3)] == [200, 200, 429]
        assert _post(s, key="other-key-0001").status_code == 200  # windows are per key
        time.sleep(0.45)
        assert _post(s).status_code == 200
        assert s.stats.rejected == {"1302": 1}


def test_retry_after_header_only_when_configured() -> None:
    with run_simulator(retry_after=1.5, latency=0) as s:
        s.force_next("1302")
        r = _post(s)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1.5"
        s.force_next("1113")
        assert "retry-after" not in _post(s).headers  # only on 1302
    with run_simulator(latency=0) as s:
        s.force_next("1302")
        r = _post(s)
        assert r.status_code == 429
        assert "retry-after" not in r.headers


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [("1113", 429), ("1305", 429), ("1301", 400), ("500", 500), ("1308", 429)],
)
def test_fault_codes_and_http_status(code: str, status: int) -> None:
    with run_simulator(faults={code: 1.0}, latency=0) as s:
        r = _post(s)
        assert r.status_code == status
        err = r.json()["error"]
        assert err["code"] == code
        assert err["message"]
        assert "{reset}" not in err["message"]
        assert s.stats.rejected == {code: 1}
        assert s.stats.admitted == 0


def test_fault_message_texts_match_glm() -> None:
    assert GLM_ERRORS["1113"] == (429, "余额不足或无可用资源包,请充值。")
    assert GLM_ERRORS["1305"] == (429, "该模型当前访问量过大，请您稍后再试")
    assert GLM_ERRORS["1302"] == (429, MSG_1302)


def test_status_override_for_1305_as_503() -> None:
    with run_simulator(model_faults={MODEL: "1305"}, status_overrides={"1305": 503}) as s:
        r = _post(s)
        assert (r.status_code, r.json()["error"]["code"]) == (503, "1305")


def test_force_next_then_succeed_and_model_scope(sim: GLMSimulator) -> None:
    sim.force_next("1302", 2)
    assert [_post(sim).status_code for _ in range(3)] == [429, 429, 200]
    sim.force_next("1113", model="glm-4.6")
    assert _post(sim).status_code == 200  # other model unaffected
    r = httpx.post(
        sim.chat_url,
        headers=_auth(),
        json={**_body(), "model": "glm-4.6"},
        timeout=TIMEOUT,
    )
    assert r.json()["error"]["code"] == "1113"
    codes = [(rec.status, rec.code) for rec in sim.history()]
    assert codes == [
        (429, "1302"),
        (429, "1302"),
        (200, None),
        (200, None),
        (429, "1113"),
    ]
    assert sim.history()[0].time <= sim.history()[-1].time


def test_model_fault_set_and_clear_at_runtime(sim: GLMSimulator) -> None:
    sim.set_model_fault(MODEL, "1305")
    assert _post(sim).status_code == 429
    sim.set_model_fault(MODEL, None)
    assert _post(sim).status_code == 200
    sim.set_faults({"500": 1.0})
    assert _post(sim).status_code == 500
    sim.clear_faults()
    assert _post(sim).status_code == 200


def test_random_faults_are_seeded_and_reproducible() -> None:
    def run() -> list[int]:
        with (
            run_simulator(faults={"1305": 0.5}, seed=7, latency=0) as s,
            httpx.Client() as c,
        ):
            return [c.post(s.chat_url, headers=_auth(), json=_body(), timeout=TIMEOUT).status_code for _ in range(30)]

    first = run()
    assert first == run()
    assert 200 in first
    assert 429 in first


def test_runtime_update_is_validated(sim: GLMSimulator) -> None:
    new = sim.update(concurrency=5, latency=(0.01, 0.005))
    assert sim.config is new
    assert sim.config.concurrency == 5
    with pytest.raises(ValueError, match="unknown GLM error code"):
        sim.update(faults={"9999": 0.1})
    with pytest.raises(ValueError, match="sum"):
        sim.update(faults={"1305": 0.6, "1113": 0.6})
    with pytest.raises(ValueError):
        sim.update(port=1234)
    with pytest.raises(ValueError):
        sim.force_next("nope")
    assert sim.config.concurrency == 5  # failed updates change nothing


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"rate": (0, 1.0)},
        {"rate": (1, 0.0)},
        {"latency": -1.0},
        {"faults": {"1305": 1.5}},
        {"stream_fail_reason": "boom"},
        {"status_overrides": {"1305": 200}},
        {"api_keys": [""]},
    ],
)
def test_invalid_config_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**options)


def test_config_rejects_a_single_string_of_keys() -> None:
    with pytest.raises(TypeError):
        SimulatorConfig(api_keys="abc")


# -- streaming ---------------------------------------------------------------------------


def _stream(sim: GLMSimulator, **extra: Any) -> tuple[httpx.Response, list[str]]:
    with httpx.stream(
        "POST",
        sim.chat_url,
        headers=_auth(),
        json=_body("tell me a story", stream=True, **extra),
        timeout=TIMEOUT,
    ) as r:
        text = r.read().decode()
    return r, _sse_events(text)


def test_stream_shape_done_and_usage_on_last_chunk(sim: GLMSimulator) -> None:
    r, events = _stream(sim)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3
    for c in chunks[:-1]:
        assert "usage" not in c
        assert c["choices"][0].get("finish_reason") is None
        assert c["choices"][0]["delta"]["content"]
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    usage = last["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    plain = _post(sim, text="tell me a story").json()
    assert text == plain["choices"][0]["message"]["content"]
    assert plain["usage"]["completion_tokens"] == usage["completion_tokens"]
    st = sim.stats
    assert (st.streams_started, st.streams_failed, st.completed) == (1, 0, 2)


def test_mid_stream_network_error() -> None:
    with run_simulator(stream_fail_after=2, latency=0) as s:
        _, events = _stream(s)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert len(chunks) == 3
        assert [c["choices"][0].get("finish_reason") for c in chunks] == [
            None,
            None,
            "network_error",
        ]
        assert "error" not in chunks[-1]  # GLM sends no error code mid-stream
        st = s.stats
        assert (st.streams_started, st.streams_failed, st.completed) == (1, 1, 0)
        assert st.admitted == 1
        # Non-streaming requests are unaffected by stream failures.
        assert _post(s).status_code == 200


def test_fail_next_streams_sensitive_then_ok(sim: GLMSimulator) -> None:
    sim.fail_next_streams(1, after_chunks=0, reason="sensitive")
    _, events = _stream(sim)
    assert json.loads(events[0])["choices"][0]["finish_reason"] == "sensitive"
    _, events = _stream(sim)
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"


def test_stream_disconnect_mode_drops_connection(sim: GLMSimulator) -> None:
    sim.fail_next_streams(1, after_chunks=1, reason="disconnect")
    with pytest.raises(httpx.HTTPError):
        _stream(sim)
    assert sim.stats.streams_failed == 1
    _, events = _stream(sim)
    assert events[-1] == "[DONE]"


def test_errors_before_stream_are_plain_json(sim: GLMSimulator) -> None:
    sim.force_next("1302")
    r, _ = _stream(sim)
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("application/json")
    assert sim.stats.streams_started == 0


# -- counters and lifecycle ------------------------------------------------------------


def test_counters_and_reset(sim: GLMSimulator) -> None:
    _post(sim)
    _post(sim, key=None)
    sim.force_next("1305")
    _post(sim)
    st = sim.stats
    assert st.total_requests == 3
    assert st.admitted == st.completed == 1
    assert st.rejected == {"1001": 1, "1305": 1}
    assert st.rejected_total == 2
    assert st.peak_in_flight == 1
    assert st.in_flight == 0
    assert st.in_flight_for(KEY, MODEL) == 0
    sim.reset_stats()
    st = sim.stats
    assert (st.total_requests, st.admitted, st.rejected_total, st.peak_in_flight) == (
        0,
        0,
        0,
        0,
    )
    assert sim.history() == ()


def _wait_for(pred: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_stop_waits_for_in_flight_and_closes_everything() -> None:
    s = GLMSimulator(latency=0.3)
    with s:
        url = s.chat_url
        idle = httpx.Client(timeout=TIMEOUT)  # leaves an idle keep-alive connection open
        assert idle.post(s.chat_url, headers=_auth(), json=_body()).status_code == 200
        s.update(latency=0.4)
        results: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: results.append(_post(s)))
        worker.start()
        _wait_for(lambda: s.stats.in_flight == 1)
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    worker.join(TIMEOUT)
    assert results[0].status_code == 200
    assert results[0].headers["connection"] == "close"
    assert not s.running
    assert not any(t.name == "glm-simulator" for t in threading.enumerate())
    with pytest.raises(httpx.TransportError):  # nothing listens any more
        idle.post(url, headers=_auth(), json=_body())
    idle.close()
    s.stop()  # idempotent


def test_stop_timeout_cuts_slow_requests() -> None:
    s = GLMSimulator(latency=10.0)
    s.start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _post(s)
        except httpx.HTTPError as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    _wait_for(lambda: s.stats.in_flight == 1)
    started = time.monotonic()
    stats_before = s.stats
    s.stop(timeout=0.2)
    assert time.monotonic() - started < 2.0
    worker.join(TIMEOUT)
    assert len(errors) == 1
    assert stats_before.admitted == 1
    assert s.stats.disconnected == 1
    assert s.stats.in_flight == 0


def test_restart_and_double_start_and_port_in_use() -> None:
    s = GLMSimulator(latency=0)
    s.start()
    try:
        with pytest.raises(RuntimeError):
            s.start()
        with pytest.raises(OSError), run_simulator(port=s.port):
            pass
    finally:
        s.stop()
    with s:  # a stopped simulator can start again
        assert _post(s).status_code == 200


def test_starts_fast() -> None:
    started = time.monotonic()
    with run_simulator() as s:
        assert s.running
        assert time.monotonic() - started < 0.5


# -- pytest fixture ----------------------------------------------------------------------


def test_fixture_defaults(glm_simulator: GLMSimulator) -> None:
    assert glm_simulator.running
    assert glm_simulator.config.concurrency == 2
    assert _post(glm_simulator).status_code == 200


@pytest.mark.parametrize("glm_simulator", [{"concurrency": 1, "retry_after": 2}], indirect=True)
def test_fixture_indirect_params(glm_simulator: GLMSimulator) -> None:
    assert glm_simulator.config.concurrency == 1
    assert glm_simulator.config.retry_after == 2


PLUGIN_TEST = """
import httpx
import pytest
from glm_guard.testing import SimulatorConfig

@pytest.mark.glm_simulator(concurrency=1, faults={"1305": 1.0})
def test_marker(glm_simulator):
    assert glm_simulator.config.concurrency == 1
    r = httpx.post(glm_simulator.chat_url, headers={"Authorization": "Bearer k"},
                   json={"model": "m", "messages": [{"role": "user", "content": "x"}]}, timeout=5)
    assert r.json()["error"]["code"] == "1305"

pytestmark = pytest.mark.glm_simulator(concurrency=3, latency=0)

def test_module_marker(glm_simulator):
    assert glm_simulator.config.concurrency == 3

@pytest.mark.glm_simulator(SimulatorConfig(retry_after=2.0), seed=5)
def test_config_positional_and_merge(glm_simulator):
    cfg = glm_simulator.config
    assert (cfg.retry_after, cfg.seed, cfg.concurrency, cfg.latency) == (2.0, 5, 3, 0.0)
"""


def _run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on a bare "user project" (no autoloaded plugins: realistic and fast)."""
    (tmp_path / "test_plugin_user.py").write_text(PLUGIN_TEST)
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
    cmd += ["--strict-markers", "-c", str(ini), *args, str(tmp_path)]
    env = {**_env(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_plugin_marker_in_a_user_project(tmp_path: Path) -> None:
    enabled = _run_pytest(tmp_path, "-p", "glm_guard.testing.pytest_plugin")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert "3 passed" in enabled.stdout
    disabled = _run_pytest(tmp_path)  # off unless requested
    assert disabled.returncode != 0
    assert "glm_simulator" in disabled.stdout


# -- CLI ------------------------------------------------------------------------------------


def test_cli_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in out
        assert action.help


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "10"],
        ["--fault", "9999=0.5"],
        ["--latency-ms", "x"],
        ["--port", "-1"],
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *argv])
    assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_signal(sig: signal.Signals) -> None:
    cmd = [
        sys.executable,
        "-m",
        "glm_guard",
        "simulate",
        "--port",
        "0",
        "--concurrency",
        "1",
    ]
    cmd += [
        "--api-key",
        KEY,
        "--latency-ms",
        "1,1",
        "--fault",
        "1305=0",
        "--rate",
        "100/1",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
            assert ready, "CLI did not print its URL in time"
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            assert base_url.endswith("/api/paas/v4")
            r = httpx.post(
                f"{base_url}/chat/completions",
                headers=_auth(),
                json=_body(),
                timeout=TIMEOUT,
            )
            assert r.status_code == 200
            r = httpx.post(
                f"{base_url}/chat/completions",
                headers=_auth("wrong"),
                json=_body(),
                timeout=TIMEOUT,
            )
            assert r.json()["error"]["code"] == "1002"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "requests=2" in err
    assert KEY not in err


# -- capacity timeline, quota, arrears, overload, heavy-tailed latency -----------------------


async def _send(client: httpx.AsyncClient, sim: GLMSimulator, model: str = MODEL) -> httpx.Response:
    return await client.post(sim.chat_url, headers=_auth(), json={**_body(), "model": model})


async def _until_elapsed(sim: GLMSimulator, seconds: float) -> None:
    deadline = time.monotonic() + TIMEOUT
    while sim.stats.timeline_elapsed < seconds:
        assert time.monotonic() < deadline, "the timeline did not advance"
        await asyncio.sleep(0.01)


async def test_capacity_rise_admits_what_the_first_phase_refused() -> None:
    with run_simulator(capacity_timeline=[(2, 1.0), (4, 60.0)], latency=2.0) as s:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            s.restart_timeline()
            first = [asyncio.create_task(_send(client, s)) for _ in range(3)]
            await _until_elapsed(s, 1.1)  # phase 2 while the first two are still in flight
            assert s.stats.capacity == 4
            assert s.stats.in_flight_for(KEY, MODEL) == 2
            later = await asyncio.gather(*(_send(client, s) for _ in range(2)))
            codes = sorted(r.status_code for r in await asyncio.gather(*first))
        assert codes == [200, 200, 429]  # phase 1: the third of three got 1302
        assert [r.status_code for r in later] == [200, 200]  # phase 2: the 3rd and 4th in flight are fine
        assert s.stats.peak_for(KEY, MODEL) == 4
        for record in s.history():
            assert s.capacity_at(record.time) == (2 if record.time - s.timeline_origin < 1.0 else 4)


async def test_capacity_drop_keeps_calls_in_flight_and_refuses_new_ones() -> None:
    with run_simulator(capacity_timeline=[(3, 0.8), (1, 60.0)], latency=1.6) as s:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            s.restart_timeline()
            held = [asyncio.create_task(_send(client, s)) for _ in range(3)]
            await _until_elapsed(s, 0.9)
            assert s.stats.capacity == 1
            assert s.stats.in_flight_for(KEY, MODEL) == 3  # the drop cut nothing
            assert (await _send(client, s)).json()["error"]["code"] == "1302"
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
            after = sorted(r.status_code for r in await asyncio.gather(*(_send(client, s) for _ in range(2))))
        assert after == [200, 429]
        history = s.history()
        admitted = [r for r in history if r.admitted]
        assert all(r.outcome == "completed" and r.end is not None and r.end > r.time for r in admitted)
        assert all(r.outcome == "rejected" and r.end == r.time for r in history if not r.admitted)
        drop = s.timeline_origin + 0.85
        assert gt.in_flight_at(history, drop, api_key=KEY, model=MODEL) == 3
        assert gt.count_codes(history, "1302", drop, math.inf) == 2
        assert gt.count_codes(history, None, s.timeline_origin, math.inf) == 4


def test_capacity_timeline_values_cycle_function_and_validation() -> None:
    phases = [(4, 6.0), (2, 6.0), (None, 6.0)]
    cfg = SimulatorConfig(capacity_timeline=phases, concurrency=9)
    assert [cfg.capacity_at(t) for t in (0, 5.9, 6.0, 11.9, 12.0, 1e6)] == [4, 4, 2, 2, None, None]
    assert cfg.limit_for("glm-4.6", 7.0) == 2
    assert SimulatorConfig(concurrency=9).capacity_at(100.0) == 9
    cycling = gt.CapacityTimeline(phases[:2], cycle=True)
    assert [cycling.at(t) for t in (1.0, 7.0, 13.0, 19.0)] == [4, 2, 4, 2]
    assert cycling.changes(20.0) == [(0.0, 4), (6.0, 2), (12.0, 4), (18.0, 2)]
    step = SimulatorConfig(capacity_timeline=lambda t: 5 if t < 1 else 1)
    assert (step.capacity_at(0.5), step.capacity_at(2.0)) == (5, 1)
    for bad in ([], [(0, 1.0)], [(2, 0.0)], [(2, -1.0)], [(2,)], [(True, 1.0)]):
        with pytest.raises(ValueError, match="capacity_timeline"):
            SimulatorConfig(capacity_timeline=bad)


_RESET = re.compile(r"您的限额将在 (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) 重置")


def _cst(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone(timedelta(hours=8))).timestamp()


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a zone far from UTC+8, so a reset written in local time would be hours off."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("new_york")
def test_quota_closes_after_n_calls_names_its_reset_in_cst_and_reopens() -> None:
    with run_simulator(quota_after=2, quota_reset=1.5, quota_next_flush_time=True, latency=0) as s:
        assert [_post(s).status_code for _ in range(2)] == [200, 200]
        refused = _post(s)
        now = time.time()
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "1308"
        assert error["message"].startswith("已达到 5 小时 的使用上限。")
        match = _RESET.search(error["message"])
        assert match is not None, error["message"]
        reset = _cst(match.group(1))
        assert 0.4 < reset - now <= 2.6  # 1.5 s, rounded up to a whole second
        assert error["next_flush_time"] == int(reset * 1000)
        assert _post(s, key="other-key-0001").status_code == 200  # windows are per key
        time.sleep(max(0.0, reset - time.time()) + 0.05)
        assert [_post(s).status_code for _ in range(3)] == [200, 200, 429]  # reopened, and counts again


@pytest.mark.usefixtures("new_york")
def test_reset_times_are_china_standard_time_whatever_the_local_zone() -> None:
    assert gt._catalogue.format_reset(0) == "1970-01-01 08:00:00"
    text = gt._catalogue.error_message("1310", clock=lambda: 1_700_000_000.2)
    assert text == "您已达到每周/每月使用上限，您的限额将在 2023-11-15 07:13:21 重置。"


def test_exhaust_quota_now_for_one_key_then_clear(sim: GLMSimulator) -> None:
    reset = sim.exhaust_quota("1310", reset_in=30.0, api_key=KEY)
    error = _post(sim).json()["error"]
    assert error["code"] == "1310"
    assert "next_flush_time" not in error  # only with quota_next_flush_time
    assert _cst(_RESET.search(error["message"]).group(1)) == reset  # type: ignore[union-attr]
    assert _post(sim, key="other-key-0001").status_code == 200
    sim.clear_quota(KEY)
    assert _post(sim).status_code == 200
    sim.update(quota_next_flush_time=True)
    sim.exhaust_quota("1304", reset_in=5.0)  # every key, daily: GLM's text names no time
    for key in (KEY, "other-key-0001"):
        error = _post(sim, key=key).json()["error"]
        assert (error["code"], error["message"]) == ("1304", GLM_ERRORS["1304"][1])
        assert error["next_flush_time"] > time.time() * 1000
    with pytest.raises(ValueError, match="quota code"):
        sim.exhaust_quota("1302")


def test_quota_after_zero_refuses_at_once_and_bad_quota_options_fail() -> None:
    with run_simulator(quota_after=0, quota_code="1304", latency=0) as s:
        assert _post(s).json()["error"]["code"] == "1304"
        assert s.stats.admitted == 0
    for bad in ({"quota_after": -1}, {"quota_code": "1302"}, {"quota_reset": 0}):
        with pytest.raises(ValueError):
            SimulatorConfig(**bad)  # type: ignore[arg-type]


def test_arrears_until_cleared_for_some_keys_or_all(sim: GLMSimulator) -> None:
    sim.set_arrears({KEY})
    assert [_post(sim).json()["error"]["code"] for _ in range(3)] == ["1113"] * 3
    assert _post(sim, key="other-key-0001").status_code == 200
    sim.set_arrears(True)
    assert _post(sim, key="other-key-0001").json()["error"]["code"] == "1113"
    sim.set_arrears(False)
    assert _post(sim).status_code == 200
    assert KEY not in repr(SimulatorConfig(arrears=[KEY]))


def test_overload_one_model_while_another_answers(sim: GLMSimulator) -> None:
    def post(model: str) -> httpx.Response:
        return httpx.post(sim.chat_url, headers=_auth(), json={**_body(), "model": model}, timeout=TIMEOUT)

    sim.overload_model(MODEL)
    assert post(MODEL).json() == {"error": {"code": "1305", "message": GLM_ERRORS["1305"][1]}}
    assert post("glm-4-air").status_code == 200
    assert sim.overloaded_models() == (MODEL,)
    sim.overload_model(MODEL, code="1312", switch_to="glm-4-air", duration=0.3)
    r = post(MODEL)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "1312")
    assert r.json()["error"]["message"] == "该模型当前访问量过大，请您稍后再试，或切换其他模型如 glm-4-air 等"
    time.sleep(0.35)
    assert post(MODEL).status_code == 200  # the overload's duration is over
    assert sim.overloaded_models() == ()
    sim.update(seed=3)
    sim.overload_model(MODEL, fraction=0.5)
    codes = [post(MODEL).status_code for _ in range(40)]
    assert 8 <= codes.count(429) <= 32
    sim.clear_overload(MODEL)
    assert post(MODEL).status_code == 200
    for bad in ({"code": "1302"}, {"fraction": 0.0}, {"fraction": 1.5}, {"duration": -1.0}):
        with pytest.raises(ValueError):
            sim.overload_model(MODEL, **bad)  # type: ignore[arg-type]


def test_lognormal_latency_median_tail_and_seed() -> None:
    import random

    def draws(spec: gt.LogNormalLatency, seed: int = 1) -> list[float]:
        rng = random.Random(seed)
        return sorted(spec.draw(rng) for _ in range(4000))

    body = draws(gt.LogNormalLatency(0.2, 0.6))
    assert 0.18 < body[2000] < 0.22
    assert body[3960] > 2.5 * body[2000]  # p99 far above the median: a heavy tail
    assert body == draws(gt.LogNormalLatency(0.2, 0.6))  # seeded
    tail = draws(gt.LogNormalLatency(0.2, 0.6, pareto_share=0.05, pareto_alpha=1.2))
    assert tail[3990] > body[3990]
    assert max(draws(gt.LogNormalLatency(0.2, 1.0, cap=0.5))) == 0.5
    for bad in ({"median": 0}, {"sigma": -1}, {"pareto_share": 2}, {"cap": 0}):
        with pytest.raises(ValueError):
            gt.LogNormalLatency(**{"median": 0.2, "sigma": 0.5, **bad})  # type: ignore[arg-type]


async def test_lognormal_latency_holds_slots_for_its_draws() -> None:
    spec = gt.LogNormalLatency(0.05, 0.5, cap=0.3)
    with run_simulator(latency=spec, concurrency=None, seed=5) as s:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            responses = await asyncio.gather(*(_send(client, s) for _ in range(30)))
        assert {r.status_code for r in responses} == {200}
        held = sorted(r.end - r.time for r in s.history() if r.end is not None)
        assert len(held) == 30
        assert 0.025 < held[15] < 0.12
        assert held[-1] < 0.3 + 0.2


# -- CLI: the provider's moods ----------------------------------------------------------


def _simulate_config(*argv: str) -> SimulatorConfig:
    from glm_guard.cli import build_parser
    from glm_guard.cli._simulate import _config_from

    return _config_from(build_parser().parse_args(["simulate", *argv]))


def test_cli_builds_timeline_latency_quota_and_arrears() -> None:
    cfg = _simulate_config(
        "--capacity-timeline", "4:6,2:6,0:1", "--capacity-cycle",
        "--latency", "lognormal:0.2:0.6:0.01", "--latency-cap", "5",
        "--quota-after", "10", "--quota-code", "1310", "--quota-reset", "30", "--quota-next-flush-time",
        "--arrears",
    )  # fmt: skip
    assert cfg.capacity_timeline == gt.CapacityTimeline([(4, 6.0), (2, 6.0), (None, 1.0)], cycle=True)
    assert cfg.latency == gt.LogNormalLatency(0.2, 0.6, pareto_share=0.01, cap=5.0)
    assert (cfg.quota_after, cfg.quota_code, cfg.quota_reset, cfg.quota_next_flush_time) == (10, "1310", 30.0, True)
    assert cfg.arrears is True
    assert _simulate_config("--latency", "uniform:0.1:0.3").latency == pytest.approx((0.2, 0.1))
    assert _simulate_config("--latency", "0.5").latency == 0.5
    assert _simulate_config().latency == (0.02, 0.0)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--capacity-timeline", "4"], "--capacity-timeline"),
        (["--capacity-timeline", "4:0"], "--capacity-timeline"),
        (["--capacity-timeline", "-1:5"], "--capacity-timeline"),
        (["--capacity-cycle"], "--capacity-cycle"),
        (["--latency", "lognormal:0.2"], "--latency"),
        (["--latency", "uniform:3:1"], "--latency"),
        (["--latency", "0.1", "--latency-ms", "5"], "--latency"),
        (["--latency-cap", "2"], "--latency-cap"),
        (["--quota-after", "-1"], "--quota-after"),
        (["--quota-code", "1302"], "--quota-code"),
        (["--quota-reset", "0"], "--quota-reset"),
        (["--overload-fraction", "1.5"], "--overload-fraction"),
        (["--overload-code", "1113"], "--overload-code"),
        (["--overload-for", "nan"], "--overload-for"),
    ],
)
def test_cli_rejects_bad_provider_options_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--port", "0", *argv])
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_cli_overloads_one_model_and_closes_quotas() -> None:
    cmd = [sys.executable, "-m", "glm_guard", "simulate", "--port", "0", "--latency", "0"]
    cmd += ["--overload-model", "glm-4.6", "--overload-code", "1312", "--overload-switch-to", "glm-4-air"]
    cmd += ["--quota-after", "2", "--quota-reset", "60", "--quota-next-flush-time"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
            assert ready, "CLI did not print its URL in time"
            url = proc.stdout.readline().strip() + "/chat/completions"

            def post(model: str) -> dict[str, Any]:
                body = {**_body(), "model": model}
                return httpx.post(url, headers=_auth(), json=body, timeout=TIMEOUT).json()

            assert "glm-4-air" in post("glm-4.6")["error"]["message"]
            assert [bool(post(MODEL).get("choices")) for _ in range(2)] == [True, True]
            error = post(MODEL)["error"]
            assert error["code"] == "1308"
            assert 55_000 < error["next_flush_time"] - time.time() * 1000 <= 61_000
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err


# -- the real SDKs ---------------------------------------------------------------------


def test_openai_sync_success_stream_and_errors() -> None:
    with (
        run_simulator(api_keys=[KEY], latency=0, stream_chunk_delay=0) as s,
        openai.OpenAI(api_key=KEY, base_url=s.base_url, max_retries=0, timeout=TIMEOUT) as client,
    ):
        msgs: Any = [{"role": "user", "content": "hi"}]
        resp = client.chat.completions.create(model=MODEL, messages=msgs)
        assert resp.choices[0].finish_reason == "stop"
        assert resp.choices[0].message.content and "hi" in resp.choices[0].message.content
        assert resp.usage is not None and resp.usage.total_tokens > 0

        chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == (resp.choices[0].message.content)
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == resp.usage.total_tokens

        s.force_next("1302")
        with pytest.raises(openai.RateLimitError) as rl:
            client.chat.completions.create(model=MODEL, messages=msgs)
        assert rl.value.status_code == 429
        assert rl.value.code == "1302"
        assert rl.value.body == {"code": "1302", "message": MSG_1302}
        assert "retry-after" not in rl.value.response.headers

        s.force_next("1113")
        with pytest.raises(openai.RateLimitError) as bal:
            client.chat.completions.create(model=MODEL, messages=msgs)
        assert bal.value.code == "1113"
        s.force_next("1301")
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=MODEL, messages=msgs)
        assert bad.value.code == "1301"
        s.force_next("500")
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=msgs)

        s.fail_next_streams(after_chunks=1)
        chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, stream=True))
        assert [c.choices[0].finish_reason for c in chunks] == [None, "network_error"]

    with (
        run_simulator(api_keys=[KEY], latency=0) as s,
        openai.OpenAI(api_key="wrong-key", base_url=s.base_url, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as auth,
    ):
        client.chat.completions.create(model=MODEL, messages=msgs)
    assert auth.value.code == "1002"


async def test_openai_async_concurrency_limit_and_stream() -> None:
    with run_simulator(concurrency=1, latency=0.3, stream_chunk_delay=0) as s:
        async with openai.AsyncOpenAI(api_key=KEY, base_url=s.base_url, max_retries=0, timeout=TIMEOUT) as client:
            msgs: Any = [{"role": "user", "content": "hi"}]
            results = await asyncio.gather(
                *(client.chat.completions.create(model=MODEL, messages=msgs) for _ in range(3)),
                return_exceptions=True,
            )
            ok = [r for r in results if not isinstance(r, BaseException)]
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(ok) == 1
            assert len(errors) == 2
            for e in errors:
                assert isinstance(e, openai.RateLimitError)
                assert e.code == "1302"
                assert e.status_code == 429
            assert s.stats.peak_in_flight == 1

            stream = await client.chat.completions.create(model=MODEL, messages=msgs, stream=True)
            chunks = [c async for c in stream]
            assert chunks[-1].choices[0].finish_reason == "stop"
            assert chunks[-1].usage is not None


def test_zhipuai_sync_success_stream_and_1302() -> None:
    with run_simulator(concurrency=1, latency=0.3, stream_chunk_delay=0) as s:
        client = zhipuai.ZhipuAI(api_key=KEY, base_url=s.base_url, max_retries=0, timeout=TIMEOUT)
        try:
            msgs: Any = [{"role": "user", "content": "你好"}]

            def call() -> Any:
                return client.chat.completions.create(model=MODEL, messages=msgs)

            with ThreadPoolExecutor(3) as pool:
                futures = [pool.submit(call) for _ in range(3)]
            outcomes = [f.exception() or f.result() for f in futures]
            limited = [o for o in outcomes if isinstance(o, zhipuai.APIReachLimitError)]
            ok = [o for o in outcomes if not isinstance(o, BaseException)]
            assert len(ok) == 1
            assert len(limited) == 2
            for e in limited:
                assert e.status_code == 429
                assert json.loads(e.response.text)["error"] == {
                    "code": "1302",
                    "message": MSG_1302,
                }
            assert ok[0].choices[0].finish_reason == "stop"
            assert "你好" in ok[0].choices[0].message.content
            assert ok[0].usage.total_tokens > 0

            s.update(latency=0)
            chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, stream=True))
            assert chunks[-1].choices[0].finish_reason == "stop"
            assert chunks[-1].usage.total_tokens == ok[0].usage.total_tokens
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            assert text == ok[0].choices[0].message.content

            s.fail_next_streams(after_chunks=2)
            chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, stream=True))
            assert chunks[-1].choices[0].finish_reason == "network_error"
            assert len(chunks) == 3
        finally:
            client.close()

    with run_simulator(api_keys=[KEY], latency=0) as s:
        client = zhipuai.ZhipuAI(api_key="bad-key-000000", base_url=s.base_url, max_retries=0)
        try:
            with pytest.raises(zhipuai.APIAuthenticationError) as exc:
                client.chat.completions.create(model=MODEL, messages=msgs)
            assert json.loads(exc.value.response.text)["error"]["code"] == "1002"
        finally:
            client.close()
