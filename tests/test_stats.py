"""The stats recorder: what is counted where, window arithmetic, Redis aggregation, alerts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import glm_guard
from glm_guard import (
    AutoConcurrency,
    ConfigurationError,
    LimitChanged,
    RateLimitTimeout,
    Settings,
    cached_response,
    fallback,
    rate_limited,
    retry_on_1302,
)
from glm_guard.backends._base import Backend, LearnedState
from glm_guard.backends._learned import stored_state
from glm_guard.backends._local import LocalBackend
from glm_guard.backends._redis import RedisBackend
from glm_guard.monitoring import _alerts, _counters, _events, _histogram, _recorder, _views
from glm_guard.monitoring._events import HUB, CallEvent
from glm_guard.testing import run_simulator

from .conftest import REDIS_PASSWORD
from .helpers import SEED_1113, SEED_1302, ErrorWithText
from .redis_deployments import acl_server

ROOT = Path(__file__).resolve().parent.parent
T0 = time.time() // 60 * 60  # a whole minute, so tests know where minute boundaries fall


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_stats(monkeypatch: pytest.MonkeyPatch) -> Iterator[_recorder.Recorder]:
    """The process recorder, emptied, with its thread stopped so every fold happens in the test."""
    recorder = _recorder.RECORDER
    recorder.stop(join=True)
    monkeypatch.setattr(recorder, "start", lambda: None)
    recorder.set_sink(None)
    recorder.reset()
    recorder.set_recording(True)
    monkeypatch.setattr(_alerts.MONITOR, "_local", _alerts._ProcessState())
    yield recorder
    recorder.set_sink(None)
    recorder.reset()
    recorder.set_recording(True)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """One fake wall clock for the events' time stamps and the recorder's idea of now."""
    fake = Clock()
    monkeypatch.setattr(_recorder.RECORDER, "clock", fake)
    monkeypatch.setattr(_events, "wall_clock", fake)
    return fake


def key_stats(key: str) -> dict[str, Any]:
    return glm_guard.stats()["keys"][key]


# -- what is counted where -----------------------------------------------------------------------


def test_a_stack_counts_each_call_once_and_every_attempt(local_backend: LocalBackend) -> None:
    failures = {"a": 2, "b": 99}

    @cached_response(ttl=60, backend=local_backend)
    @fallback("busy")
    @retry_on_1302(max_tries=3, base_delay=0, max_delay=0)
    @rate_limited(1000, 1.0, key="glm-4", backend=local_backend, cooldown=0)
    def ask(question: str) -> dict[str, Any]:
        if failures[question] > 0:
            failures[question] -= 1
            raise ErrorWithText(SEED_1302)
        return {"answer": question, "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}

    assert ask("a")["answer"] == "a"  # two 1302s, then an answer
    assert ask("a")["answer"] == "a"  # from the cache
    assert ask("b") == "busy"  # three 1302s, retries exhausted, the fallback

    data = key_stats("glm-4")  # the rate_limited key names the whole stack
    assert (data["calls"], data["successes"], data["fallbacks"], data["failures"]) == (3, 2, 1, 0)
    assert data["success_rate"] == round(2 / 3, 6)
    assert data["attempts"] == 6
    assert data["errors"]["rate_limit"] == {"1302": 5} and data["errors_1302"] == 5
    assert (data["retries"], data["retries_exhausted"]) == (4, 1)
    assert data["cache"] == {"hits": 1, "misses": 2, "hit_rate": round(1 / 3, 6)}
    assert data["tokens"] == {"prompt": 7, "completion": 5, "total": 12}
    assert data["latency"]["count"] == 3 and data["attempt_latency"]["count"] == 6
    assert glm_guard.stats()["total"]["calls"] == 3


async def test_async_calls_count_permanent_other_and_timeout_errors(local_backend: LocalBackend) -> None:
    @rate_limited(1, 60.0, backend=local_backend, max_wait=0, cooldown=0)
    async def once() -> str:
        return "ok"

    @retry_on_1302(max_tries=3, base_delay=0)
    async def broken(kind: str) -> str:
        await asyncio.sleep(0)
        raise ErrorWithText(SEED_1113) if kind == "balance" else ValueError("bug")

    assert await once() == "ok"
    with pytest.raises(RateLimitTimeout):
        await once()
    for kind in ("balance", "bug"):
        with pytest.raises((ErrorWithText, ValueError)):
            await broken(kind)

    limited = key_stats(f"{__name__}.test_async_calls_count_permanent_other_and_timeout_errors.<locals>.once")
    assert (limited["calls"], limited["successes"], limited["failures"], limited["attempts"]) == (2, 1, 1, 1)
    assert limited["waits"]["timeouts"] == 1
    failing = key_stats(f"{__name__}.test_async_calls_count_permanent_other_and_timeout_errors.<locals>.broken")
    assert (failing["calls"], failing["failures"], failing["attempts"], failing["retries"]) == (2, 2, 2, 0)
    assert failing["errors"]["permanent"] == {"1113": 1} and failing["errors"]["other"] == 1


def test_counters_match_the_simulator_with_real_1302s() -> None:
    with run_simulator(concurrency=1, latency=0.02) as sim:
        client = httpx.Client(base_url=sim.base_url, headers={"Authorization": "Bearer test-key-1"}, timeout=10)

        @retry_on_1302(max_tries=500, base_delay=0.01, max_delay=0.05, retry_budget=False)  # never exhausted
        def ask(i: int) -> dict[str, Any]:
            response = client.post(
                "/chat/completions", json={"model": "glm-4", "messages": [{"role": "user", "content": f"秘密 {i}"}]}
            )
            response.raise_for_status()
            return dict(response.json())

        answers: list[dict[str, Any]] = []

        def worker(start: int) -> None:
            answers.extend(ask(start + i) for i in range(5))

        threads = [threading.Thread(target=worker, args=(10 * t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen = sim.stats
        client.close()

    data = key_stats(f"{__name__}.test_counters_match_the_simulator_with_real_1302s.<locals>.ask")
    assert seen.rejected.get("1302", 0) > 0  # four callers against a limit of one: real 1302s
    assert data["errors_1302"] == seen.rejected["1302"] == data["retries"]
    assert data["attempts"] == seen.total_requests
    assert data["calls"] == data["successes"] == len(answers) == 20
    assert data["tokens"]["total"] == sum(answer["usage"]["total_tokens"] for answer in answers)
    assert "秘密" not in json.dumps(glm_guard.stats(), ensure_ascii=False)


def test_tokens_from_an_sdk_object() -> None:
    openai = pytest.importorskip("openai")
    with run_simulator(latency=0) as sim:
        client = openai.OpenAI(api_key="test-key-1", base_url=sim.base_url, max_retries=0)

        @retry_on_1302
        def ask() -> Any:
            return client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": "hi there"}])

        answer = ask()
        client.close()
    data = key_stats(f"{__name__}.test_tokens_from_an_sdk_object.<locals>.ask")
    usage = answer.usage
    expected = {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens, "total": usage.total_tokens}
    assert data["tokens"] == expected and expected["total"] > 0


def test_waits_for_a_permit_are_timed(local_backend: LocalBackend) -> None:
    @rate_limited(2, 0.2, backend=local_backend)
    def call() -> None:
        return None

    for _ in range(3):
        call()
    waits = key_stats(f"{__name__}.test_waits_for_a_permit_are_timed.<locals>.call")["waits"]
    assert waits["count"] == 1  # the first two were admitted at once
    assert 0.1 < waits["mean"] < 0.4 and waits["p50"] == pytest.approx(waits["mean"], rel=0.15)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_lone_rate_limit_counts_calls_attempts_errors_and_waits(flavour: str, local_backend: LocalBackend) -> None:
    # rate_limited alone reports its call and its attempt itself, in one record when it can.
    outcomes = iter([None, None, {"answer": 1, "usage": {"total_tokens": 3}}, ErrorWithText(SEED_1302), None])

    def step() -> Any:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    if flavour == "sync":

        @rate_limited(4, 0.3, key="lone", backend=local_backend, cooldown=0)
        def call() -> Any:
            return step()

        def run() -> Any:
            return call()
    else:

        @rate_limited(4, 0.3, key="lone", backend=local_backend, cooldown=0)
        async def acall() -> Any:
            return step()

        def run() -> Any:
            return asyncio.run(acall())

    results = []
    for _ in range(5):
        try:
            results.append(run())
        except ErrorWithText:
            results.append("1302")
    assert results == [None, None, {"answer": 1, "usage": {"total_tokens": 3}}, "1302", None]
    data = key_stats("lone")
    assert (data["calls"], data["successes"], data["failures"], data["attempts"]) == (5, 4, 1, 5)
    assert data["errors_1302"] == 1 and data["tokens"]["total"] == 3
    assert data["latency"]["count"] == 5 and data["attempt_latency"]["count"] == 5
    assert data["waits"]["count"] == 1  # the fifth start waited for the window


def test_a_stream_is_one_attempt_with_its_last_chunks_usage(local_backend: LocalBackend) -> None:
    tries = [0]

    @retry_on_1302(max_tries=3, base_delay=0)
    @rate_limited(100, 1.0, key="stream", backend=local_backend, cooldown=0)
    def stream() -> Any:
        tries[0] += 1
        if tries[0] == 1:
            raise ErrorWithText(SEED_1302)
        yield {"delta": "a"}
        yield {"delta": "b", "usage": {"prompt_tokens": 2, "completion_tokens": 3}}
        return "done"

    assert list(stream()) == [{"delta": "a"}, {"delta": "b", "usage": {"prompt_tokens": 2, "completion_tokens": 3}}]
    data = key_stats("stream")
    assert (data["calls"], data["successes"], data["attempts"], data["errors_1302"]) == (1, 1, 2, 1)
    assert data["tokens"] == {"prompt": 2, "completion": 3, "total": 5}


def test_a_classmethod_stack_is_one_stack(local_backend: LocalBackend) -> None:
    class Reasoner:
        @retry_on_1302(max_tries=2, base_delay=0)
        @classmethod
        @rate_limited(100, 1.0, key="cls", backend=local_backend)
        def reason(cls, question: str) -> str:
            return f"{cls.__name__}: {question}"

    assert Reasoner.reason("q") == "Reasoner: q"
    assert Reasoner().reason("q") == "Reasoner: q"
    data = key_stats("cls")
    assert (data["calls"], data["attempts"]) == (2, 2)


def test_recording_never_changes_what_a_call_returns_or_raises(local_backend: LocalBackend) -> None:
    class Odd:
        @property
        def usage(self) -> object:
            raise RuntimeError("a property that breaks")

    odd, error = Odd(), ErrorWithText(SEED_1302)

    @rate_limited(100, 1.0, backend=local_backend, cooldown=0)
    def returns() -> Odd:
        return odd

    @rate_limited(100, 1.0, backend=local_backend, cooldown=0)
    def raises() -> None:
        raise error

    assert returns() is odd
    with pytest.raises(ErrorWithText) as caught:
        raises()
    assert caught.value is error


@pytest.mark.skipif(not hasattr(os, "fork") or sys.version_info >= (3, 12), reason="fork with threads warns on 3.12")
def test_a_forked_child_starts_from_zero(local_backend: LocalBackend) -> None:
    @rate_limited(100, 1.0, key="forked", backend=local_backend)
    def call() -> None:
        return None

    call()  # still buffered when the child is forked: the parent reports it, not the child
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            call()
            code = 0 if glm_guard.stats()["keys"]["forked"]["calls"] == 1 else 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert key_stats("forked")["calls"] == 1


# -- switches and settings -----------------------------------------------------------------------


def test_stats_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, local_backend: LocalBackend) -> None:
    @rate_limited(100, 1.0, key="switch", backend=local_backend)
    def call() -> str:
        return "ok"

    glm_guard.configure_stats(enabled=False)
    assert not HUB.active  # nobody subscribed either: one flag check per call
    assert call() == "ok"
    assert glm_guard.stats()["keys"] == {} and glm_guard.stats()["enabled"] is False
    glm_guard.configure_stats(enabled=True)
    call()
    assert key_stats("switch")["calls"] == 1

    monkeypatch.setattr(_recorder, "_configured", False)
    monkeypatch.setenv("GLM_GUARD_STATS", "0")
    glm_guard.reload_settings()
    rate_limited(100, 1.0, backend=local_backend)(lambda: None)  # the first decoration reads it
    assert _recorder.RECORDER.recording is False


def test_the_new_variables_are_parsed_and_named_in_errors() -> None:
    settings = Settings.from_env(
        {
            "GLM_GUARD_STATS": "off",
            "GLM_GUARD_MONITOR_TOKEN": "tok-123456",
            "GLM_GUARD_ALERT_1302_PER_HOUR": "0",
            "GLM_GUARD_ALERT_MIN_SUCCESS_RATE": "0.99",
        }
    )
    assert settings.stats_enabled is False and settings.alert_1302_per_hour == 0
    assert settings.alert_min_success_rate == 0.99 and settings.monitor_token == "tok-123456"
    assert "tok-123456" not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.stats_enabled, defaults.alert_1302_per_hour, defaults.alert_min_success_rate) == (True, 1, 0.995)
    for name, bad in [
        ("GLM_GUARD_STATS", "maybe"),
        ("GLM_GUARD_ALERT_1302_PER_HOUR", "-1"),
        ("GLM_GUARD_ALERT_1302_PER_HOUR", "many"),
        ("GLM_GUARD_ALERT_MIN_SUCCESS_RATE", "1.5"),
        ("GLM_GUARD_ALERT_MIN_SUCCESS_RATE", "high"),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env({name: bad})
        assert caught.value.name == name and repr(bad) in str(caught.value)


# -- window arithmetic ---------------------------------------------------------------------------


def test_windows_are_whole_minutes_ending_now(clock: Clock, local_backend: LocalBackend) -> None:
    @rate_limited(1000, 1.0, key="win", backend=local_backend, cooldown=0)
    def call(fail: bool) -> None:
        if fail:
            raise ErrorWithText(SEED_1302)

    def one(fail: bool) -> None:
        with pytest.raises(ErrorWithText) if fail else _nothing():
            call(fail)
        _recorder.RECORDER.drain()  # fold now, while the fake clock says when the call happened

    clock.now = T0 + 59.5  # the last half second of minute 0
    one(True)
    clock.now = T0 + 60.5  # minute 1
    one(True)
    one(False)
    in_minute = glm_guard.rate_limit_stats(window_minutes=1)
    assert in_minute["keys"]["win"]["calls"] == 2 and in_minute["keys"]["win"]["errors_1302"] == 1
    assert in_minute["from"] == _views._iso(T0 + 60)
    two = glm_guard.rate_limit_stats(window_minutes=2)["keys"]["win"]
    assert two["calls"] == 3 and two["errors_1302"] == 2
    assert two["errors_1302_per_hour"] == 60.0  # 2 in a 2-minute window
    assert two["success_rate"] == round(1 / 3, 6)

    clock.now = T0 + 60 * 30 + 1
    assert glm_guard.rate_limit_stats(window_minutes=30)["keys"]["win"]["calls"] == 2  # minute 0 fell out
    hour = glm_guard.rate_limit_stats()["keys"]["win"]
    assert hour["calls"] == 3 and hour["errors_1302_per_hour"] == 2.0

    clock.now = T0 + 60 * (_counters.RETENTION_MINUTES + 5)
    one(False)  # folding now prunes the minutes past the retention
    assert min(_recorder.RECORDER.local.minutes) > T0 // 60 + 1
    assert glm_guard.rate_limit_stats(window_minutes=_counters.RETENTION_MINUTES)["keys"]["win"]["calls"] == 1
    assert glm_guard.stats()["keys"]["win"]["calls"] == 4  # totals keep everything


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("bad", [-1, 0, _counters.RETENTION_MINUTES + 1, 1.5, "60", True, None])
def test_a_bad_window_names_the_parameter(bad: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        glm_guard.rate_limit_stats(window_minutes=bad)
    assert caught.value.name == "window_minutes"


def test_histogram_percentiles_are_close_and_add_up() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(-1.5, 1.2) for _ in range(20_000))
    first: dict[int, int] = {}
    second: dict[int, int] = {}
    for i, value in enumerate(values):
        target = first if i % 2 else second
        index = _histogram.bucket(value)
        target[index] = target.get(index, 0) + 1
    merged = {i: first.get(i, 0) + second.get(i, 0) for i in first.keys() | second.keys()}
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert _histogram.quantile(merged, q) == pytest.approx(exact, rel=0.06)
    assert _histogram.quantile({}, 0.5) is None
    assert _histogram.bucket(0) == 0 and _histogram.bucket(1e9) == len(_histogram.BOUNDS)


def test_fold_adds_stacks_that_share_a_key() -> None:
    events = [CallEvent("shared", 0.5, "success", None, 10.0), CallEvent("shared", 0.5, "error", "ValueError", 20.0)]
    batch = _counters.fold(events, {})
    histogram = f"lat.{_histogram.bucket(0.5)}"
    assert batch == {0: {"shared": {"calls": 2, "successes": 1, "failures": 1, "lat_us": 1_000_000, histogram: 2}}}


# -- across processes, on Redis --------------------------------------------------------------------


def stats_worker(mode: str, redis_url: str, **options: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "GLM_GUARD_BACKEND": "redis", "REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stats_worker", mode, json.dumps(options)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_processes_aggregate_in_redis(redis_url: str) -> None:
    with run_simulator(concurrency=4, latency=0.005) as sim:
        sim.force_next("1302", 3)
        workers = [stats_worker("exit", redis_url, base_url=sim.base_url, calls=15) for _ in range(2)]
        reports = []
        for process in workers:
            out, _ = process.communicate(timeout=60)
            assert process.returncode == 0, out
            reports.append(json.loads(out.strip().splitlines()[-1]))

    glm_guard.configure_stats(backend=redis_url)
    data = glm_guard.stats()
    assert data["source"] == "redis"
    fleet = data["keys"]["mp-glm-4"]
    assert fleet["calls"] == fleet["successes"] == 30
    assert fleet["errors_1302"] == 3 and fleet["attempts"] == 33 and fleet["retries"] == 3
    assert fleet["tokens"]["total"] == sum(report["tokens"] for report in reports)
    assert fleet["latency"]["count"] == 30 and fleet["latency"]["p99"] is not None
    window = glm_guard.rate_limit_stats(window_minutes=5)["keys"]["mp-glm-4"]
    assert window["calls"] == 30 and window["errors_1302"] == 3

    glm_guard.configure_stats(backend="local")  # this process's own numbers: it made no call
    assert glm_guard.stats()["source"] == "process" and glm_guard.stats()["keys"] == {}

    client = redis.Redis.from_url(redis_url)
    buckets = list(client.keys("glm_guard:{stats}:m:*"))
    assert buckets and all(client.ttl(key) > _counters.RETENTION_MINUTES * 60 for key in buckets)
    assert client.ttl("glm_guard:{stats}:total") > 0
    client.close()
    assert REDIS_PASSWORD not in json.dumps(data)


def test_a_killed_process_loses_nothing_it_already_reported_redis(redis_url: str) -> None:
    with run_simulator(latency=0) as sim:
        process = stats_worker("linger", redis_url, base_url=sim.base_url, calls=12, linger=2.5)
        assert process.stdout is not None
        json.loads(process.stdout.readline())  # calls done 2.5 s ago: the background flush has run
        process.send_signal(signal.SIGKILL)  # no atexit, no final flush
        process.communicate(timeout=10)
    backend = RedisBackend(redis_url)
    totals = backend.shared_stats().totals()
    backend.close()
    assert totals["mp-glm-4"]["calls"] == 12 and totals["mp-glm-4"]["attempts"] == 12


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the pool forks its workers")
def test_pool_workers_ended_by_terminate_report_every_call_redis(redis_url: str) -> None:
    """``with Pool()`` ends its workers with SIGTERM: no exit hook runs there, yet no call is lost."""
    process = stats_worker("pool", redis_url, workers=3, calls=24)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert json.loads(out.strip().splitlines()[-1]) == {"total": sum(range(24))}
    backend = RedisBackend(redis_url)
    totals = backend.shared_stats().totals()
    backend.close()
    assert totals["mp-pool"]["calls"] == 24 and totals["mp-pool"]["successes"] == 24


def test_an_unreachable_redis_falls_back_to_this_process_redis(redis_server: Any, local_backend: LocalBackend) -> None:
    dead = RedisBackend("redis://:nope-pw@127.0.0.1:1/0", socket_timeout=0.2)
    glm_guard.configure_stats(backend=dead)

    @rate_limited(100, 1.0, key="offline", backend=local_backend)
    def call() -> None:
        return None

    call()
    data = glm_guard.stats()
    assert data["source"] == "process" and data["shared_error"]
    assert data["keys"]["offline"]["calls"] == 1
    assert "nope-pw" not in json.dumps(data)
    dead.close()


# -- alerts ---------------------------------------------------------------------------------------


def test_1302_alert_fires_once_and_again_on_recovery(
    clock: Clock, local_backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[glm_guard.monitoring.Alert] = []
    unregister = glm_guard.on_alert(seen.append)
    busy = [0]

    @retry_on_1302(max_tries=3, base_delay=0, retry_budget=False)  # one retry per call, for the count
    @rate_limited(100, 1.0, key="alerting", backend=local_backend, cooldown=0)
    def call() -> str:
        busy[0] += 1
        if busy[0] % 2:
            raise ErrorWithText(SEED_1302)
        return "ok"

    call()  # one 1302: at the threshold (1 per hour), not over it
    assert _alerts.MONITOR.check() == []
    with caplog.at_level(logging.WARNING, logger="glm_guard"):
        call()  # the second 1302 of the hour
        first = _alerts.MONITOR.check()
        for _ in range(3):
            call()  # more of the same crossing: no new alert
            assert _alerts.MONITOR.check() == []
        clock.now += 61 * 60  # the 1302s age out of the hour
        recovered = _alerts.MONITOR.check()
    assert [(a.alert, a.key, a.firing, a.value) for a in first] == [("errors_1302", "alerting", True, 2.0)]
    assert [(a.alert, a.firing, a.value) for a in recovered] == [("errors_1302", False, 0.0)]
    assert seen == first + recovered
    warnings = [r.getMessage() for r in caplog.records if "alert" in r.getMessage()]
    assert len(warnings) == 2 and "alerting" in warnings[0] and "resolved" in warnings[1]
    unregister()
    assert glm_guard.rate_limit_stats()["alerts"] == []


def test_success_rate_alert_needs_enough_calls(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, local_backend: LocalBackend
) -> None:
    monkeypatch.setenv("GLM_GUARD_ALERT_MIN_SUCCESS_RATE", "0.95")
    glm_guard.reload_settings()
    outcomes = iter([False] + [True] * 20)

    @rate_limited(100, 1.0, key="rate", backend=local_backend)
    def call() -> None:
        if not next(outcomes):
            raise ValueError("broken")

    with pytest.raises(ValueError):
        call()
    assert _alerts.MONITOR.check() == []  # 0% of one call: too few calls to judge
    for _ in range(9):
        call()
    (alert,) = _alerts.MONITOR.check()  # 9 of 10: 90% < 95%
    assert (alert.alert, alert.firing, alert.value, alert.threshold) == ("success_rate", True, 0.9, 0.95)
    assert glm_guard.rate_limit_stats()["alerts"][0]["alert"] == "success_rate"
    for _ in range(10):
        call()
    (back,) = _alerts.MONITOR.check()  # 19 of 20: 95%, not below
    assert (back.alert, back.firing) == ("success_rate", False)


def test_a_read_waits_for_the_events_another_thread_is_counting() -> None:
    """The stats thread takes the buffered events, then counts them; a read in between must
    wait for them, not read without them (the monitor page once drew a key's figures but not
    its charts: the two requests read on either side of the count)."""
    recorder = _recorder.Recorder()
    counting = threading.Event()
    count = recorder.ingest

    def count_slowly(events: Any) -> None:
        counting.set()
        time.sleep(0.3)  # the stats thread, descheduled on a busy host
        count(events)

    recorder.ingest = count_slowly  # type: ignore[method-assign]
    ended = time.time()
    recorder.buffer.append(CallEvent("read-while-counting", 0.1, "success", None, ended))
    stats_thread = threading.Thread(target=recorder.drain)
    stats_thread.start()
    assert counting.wait(5)
    recorder.sync()  # what every view does before it reads
    minute = int(ended // 60)
    seen = recorder.local.window(minute, minute)
    stats_thread.join(5)
    assert seen.get("read-while-counting", {}).get("calls") == 1


def test_one_process_reports_a_shared_crossing_redis(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    backend.shared_stats().add({int(T0 // 60): {"shared-key": {"err.rate_limit.1302": 5, "attempts": 5}}})
    monitors = []
    for _ in range(2):  # two processes' recorders and monitors, one Redis
        recorder = _recorder.Recorder(clock=Clock(T0 + 1))
        recorder.set_sink(backend.shared_stats())
        monitors.append(_alerts.AlertMonitor(recorder))
    reports = [monitor.check() for monitor in monitors]
    assert sorted(len(found) for found in reports) == [0, 1]
    assert [m.check() for m in monitors] == [[], []]
    backend.close()


# -- learned concurrency limits -------------------------------------------------------------------


def cut_twice(backend: Backend, key: str) -> None:
    """Four calls under ``concurrency="auto"`` (initial 4): an answer, two 1302s, an answer.

    The first 1302 cuts 4 to 1 (nothing else was running), the second finds it at 1 (a second
    cut, same value), and the last answer, at the limit, grows it again.
    """

    @rate_limited(concurrency=AutoConcurrency(initial=4), key=key, backend=backend)
    def call(fail: bool) -> None:
        if fail:
            raise ErrorWithText(SEED_1302)

    call(False)
    for _ in range(2):
        with pytest.raises(ErrorWithText):
            call(True)
    call(False)


def test_the_learned_limit_is_in_both_views_and_each_change_is_an_event(backend: Backend) -> None:
    key = f"auto-{backend.name}"
    seen: list[Any] = []
    unsubscribe = glm_guard.subscribe(seen.append)
    try:
        cut_twice(backend, key)

        @rate_limited(concurrency=2, key="fixed", backend=backend)
        def fixed() -> None:
            return None

        fixed()
    finally:
        unsubscribe()
    expected = backend.limiter(key).learned_limit()
    assert expected == 2
    changes = [event for event in seen if isinstance(event, LimitChanged)]
    assert [change[:3] for change in changes] == [(key, 1, 1), (key, 2, 2)]
    for data in (glm_guard.stats(), glm_guard.rate_limit_stats(5)):
        assert (data["keys"][key]["learned_limit"], data["keys"][key]["limit_cuts"]) == (expected, 2)
        assert data["keys"][key]["calls"] == 4 and data["keys"][key]["errors_1302"] == 2
        assert (data["keys"]["fixed"]["learned_limit"], data["keys"]["fixed"]["limit_cuts"]) == (None, None)
        assert "learned_limit" not in data["total"]  # a sum of limits means nothing
        json.dumps(data)
    if isinstance(backend, LocalBackend):
        backend.close()  # the fixture's local backend would stay listed until collected


def test_a_learned_limit_shows_even_where_nothing_is_recorded(local_backend: LocalBackend) -> None:
    glm_guard.configure_stats(enabled=False)
    try:
        cut_twice(local_backend, "unrecorded")
        block = glm_guard.stats()["keys"]["unrecorded"]
        assert (block["calls"], block["learned_limit"], block["limit_cuts"]) == (0, 2, 2)
    finally:
        glm_guard.configure_stats(enabled=True)
        local_backend.close()
    assert "unrecorded" not in glm_guard.stats()["keys"]  # a closed backend is no longer listed


def test_stats_show_the_limit_another_process_set_redis(redis_url: str) -> None:
    here, there = RedisBackend(redis_url), RedisBackend(redis_url)  # two processes' backends, one Redis

    @rate_limited(concurrency=AutoConcurrency(initial=4), key="fleet-auto", backend=here)
    def mine() -> None:
        return None

    mine()
    cut_twice(there, "fleet-auto")
    theirs = there.limiter("fleet-auto").learned_limit()
    there.close()
    assert here.limiter("fleet-auto").learned_limit() == 4  # nobody told this process yet
    assert theirs == 2
    for data in (glm_guard.stats(), glm_guard.rate_limit_stats(5)):
        assert (data["keys"]["fleet-auto"]["learned_limit"], data["keys"]["fleet-auto"]["limit_cuts"]) == (2, 2)
        assert data["keys"]["fleet-auto"]["calls"] == 5
    assert REDIS_PASSWORD not in json.dumps(glm_guard.stats())
    here.close()


def test_planted_learned_state_never_reaches_stats_redis(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:

        @rate_limited(concurrency=AutoConcurrency(initial=3), key="planted-auto", backend=backend)
        def call() -> None:
            return None

        call()
        client.hset(backend.key("planted-auto", "learned"), mapping={"limit": "1e99", "epoch": "7"})
        client.set(backend.key("planted-str", "learned"), "not a hash")
        client.hset(backend.key("planted-nan", "learned"), mapping={"limit": "nan", "epoch": "1"})
        found = backend.learned_limits(["planted-str", "planted-nan", "absent"])
        assert found == {"planted-auto": LearnedState(3, 0)}  # what Redis last told this process
        client.hset(backend.key("planted-auto", "learned"), mapping={"limit": "5", "epoch": "-1"})
        assert backend.learned_limits()["planted-auto"] == LearnedState(5, 0)  # a bad epoch reads as 0, as in Lua
    finally:
        client.close()
        backend.close()


def test_planted_fixed_limits_never_reach_stats_redis(redis_url: str) -> None:
    """The fleet's fixed limits live in one shared hash: what a writer planted there is not read as
    a number, and a hash of another type costs the flush its limits, never its counts.  Counters
    planted beside real ones are passed over too."""
    backend = RedisBackend(redis_url)
    client = redis.Redis.from_url(redis_url)
    limits = f"{backend.prefix}{{stats}}:limits"
    now = int(time.time() // 60)
    try:
        glm_guard.configure_stats(backend=backend)

        @rate_limited(concurrency=4, key="planted-fixed", backend=backend)
        def call() -> None:
            return None

        call()
        _recorder.RECORDER.sync()
        written = {key.decode(): value.decode() for key, value in client.hgetall(limits).items()}
        assert written == {"planted-fixed": f"4 {now}"} or written == {"planted-fixed": f"4 {now + 1}"}
        planted = {"inf": f"inf {now}", "huge": f"{10**10} {now}", "zero": f"0 {now}", "text": "3", "old": "5 1"}
        planted |= {"future": f"3 {now + 60}", "underscore": f"1_0 {now}", "plus": f"+3 {now}", "wide": f"\uff13 {now}"}
        client.hset(limits, mapping={**planted, "fine": f"6 {now}", b"\xff": f"2 {now}", "bad": b"\xff"})
        assert backend.fixed_limits() == {"planted-fixed": 4, "fine": 6}
        client.delete(limits)
        client.set(limits, "not a hash")
        call()
        _recorder.RECORDER.sync()
        assert glm_guard.stats()["keys"]["planted-fixed"]["calls"] == 2  # counted once, flushed once
        client.hset(f"{backend.prefix}{{stats}}:total", mapping={"other|calls": "many", b"\xff|calls": "1"})
        client.set(f"{backend.prefix}{{stats}}:m:{now - 1}", "not a hash")
        window, since_start = glm_guard.rate_limit_stats(5), glm_guard.stats()
        for view in (window, since_start):  # read from Redis, not this process's own counters
            assert view["source"] == "redis" and "shared_error" not in view
        assert since_start["keys"]["planted-fixed"]["calls"] == window["keys"]["planted-fixed"]["calls"] == 2
        assert "other" not in since_start["keys"]
        assert backend.fixed_limits() == {"planted-fixed": 4}  # this process's own, while the hash is spoilt
    finally:
        client.close()
        backend.close()


def test_a_flush_spoilt_by_a_planted_key_counts_the_rest_once_redis(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stats key of another type fails its own commands inside the flush's transaction; the
    rest of the flush went through, so it is logged once, not retried (a retry counts twice)."""
    backend = RedisBackend(redis_url)
    client = redis.Redis.from_url(redis_url)
    stats = backend.shared_stats()
    try:
        client.set(f"{backend.prefix}{{stats}}:total", "not a hash")
        now = int(time.time() // 60)
        with caplog.at_level(logging.WARNING, logger="glm_guard"):
            for _ in range(3):
                stats.add({now: {"spoilt": {"calls": 1}}})
        counted = stats.window(now - 1, now + 1)
        assert counted["spoilt"]["calls"] == 3  # each flush once in the minute hash
        assert stats.totals() == {}  # the planted key is passed over when read
        client.delete(f"{backend.prefix}{{stats}}:total")
        with caplog.at_level(logging.WARNING, logger="glm_guard"):
            stats.add({now: {"spoilt": {"calls": 1}}})  # clean: the next spoilt flush is logged again
            client.hset(f"{backend.prefix}{{stats}}:total", "spoilt|calls", "not a number")
            stats.add({now: {"spoilt": {"calls": 1}}})
        assert stats.window(now - 1, now + 1)["spoilt"]["calls"] == 5
        spoilt = [r.getMessage() for r in caplog.records if "inside a flush" in r.getMessage()]
        assert len(spoilt) == 2 and "(WRONGTYPE)" in spoilt[0] and "(ERR)" in spoilt[1]
    finally:
        client.close()
        backend.close()


def test_a_flush_refused_before_it_ran_is_kept_and_sent_whole_later_redis() -> None:
    """A transaction Redis refused as it was queued (here an ACL without HINCRBY) changed
    nothing: it is raised, not passed over as a spoilt flush, so the recorder keeps the counts
    and the next flush writes them exactly once."""
    with acl_server("stats-writer", "writer-secret", "~* &* +@all -hincrby") as server, server.client() as admin:
        backend = RedisBackend(f"redis://stats-writer:writer-secret@127.0.0.1:{server.port}/0")
        try:
            glm_guard.configure_stats(backend=backend)

            @rate_limited(10, 60.0, key="refused-flush", backend=backend)
            def call() -> None:
                return None

            call()
            call()
            _recorder.RECORDER.sync()
            now = int(time.time() // 60)
            assert backend.shared_stats().window(now - 1, now + 1) == {}  # refused: nothing written
            admin.acl_setuser("stats-writer", enabled=True, commands=["+hincrby"])
            _recorder.RECORDER.sync()
            _recorder.RECORDER.sync()
            assert backend.shared_stats().window(now - 1, now + 1)["refused-flush"]["calls"] == 2
        finally:
            backend.close()


@pytest.mark.parametrize(
    ("limit", "epoch", "expected"),
    [
        (b"3", b"2", LearnedState(3, 2)),
        (b"3", None, LearnedState(3, 0)),
        (None, b"2", None),
        (b"0", b"2", None),
        (b"2.5", b"2", None),
        (b"inf", b"2", None),
        (b"\xff", b"2", None),
        (b"4", b"x", LearnedState(4, 0)),
        (b"4", b"3.5", LearnedState(4, 0)),
    ],
)
def test_stored_learned_state_is_read_as_the_scripts_read_it(
    limit: bytes | None, epoch: bytes | None, expected: LearnedState | None
) -> None:
    assert stored_state(limit, epoch) == expected
