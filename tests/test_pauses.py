"""Quota windows, arrears and overload: the key pauses in every process, callers fail fast,
one probe per interval decides when it is over."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import openai
import pytest

import glm_guard
from glm_guard import (
    AccountInArrears,
    GLMRateLimitException,
    ModelOverloaded,
    QuotaExhausted,
    fallback,
    rate_limited,
    retry_on_1302,
)
from glm_guard._classify import DEFAULT_CLASSIFIER, reset_time
from glm_guard.backends import Backend
from glm_guard.backends._redis import RedisBackend
from glm_guard.testing import RedisServer, run_simulator

from .helpers import ErrorWithText

CST = datetime.timezone(datetime.timedelta(hours=8))


def glm_error(code: str, message: str = "x") -> ErrorWithText:
    return ErrorWithText(f'429 {{"error":{{"code":"{code}","message":"{message}"}}}}')


def quota_error(reset_in: float, code: str = "1308") -> ErrorWithText:
    reset = (datetime.datetime.now(CST) + datetime.timedelta(seconds=reset_in)).strftime("%Y-%m-%d %H:%M:%S")
    return glm_error(code, f"已达到 5 小时 的使用上限。您的限额将在 {reset} 重置。")


def probe_outcomes(calls: list[Callable[[], object]]) -> list[str]:
    """Run each call on its own thread at once: "probed" (it reached the provider, which still
    refused) or "refused" (the pause refused it first)."""
    outcomes: list[str] = []

    def caller(call: Callable[[], object]) -> None:
        try:
            call()
        except AccountInArrears:
            outcomes.append("refused")
        except ErrorWithText:
            outcomes.append("probed")

    threads = [threading.Thread(target=caller, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return outcomes


# -- reading the provider's words ------------------------------------------------------------


def test_a_reset_time_is_read_in_china_standard_time() -> None:
    expected = datetime.datetime(2026, 12, 5, 0, 0, tzinfo=datetime.UTC).timestamp()
    assert reset_time("您的限额将在 2026-12-05 08:00:00 重置。") == expected
    assert reset_time("Your limit will reset at 2026-12-05 08:00:00") == expected
    assert reset_time({"error": {"code": "1310", "next_flush_time": expected * 1000}}) == expected
    assert reset_time({"error": {"code": "1310", "next_flush_time": int(expected)}}) == expected
    assert reset_time({"next_flush_time": "2026-12-05 08:00:00"}) == expected
    for garbage in ("将在 2026-13-45 99:00:00 重置", "no time here", {"next_flush_time": "soon"}, None, 42):
        assert reset_time(garbage) is None


def test_the_reset_time_does_not_depend_on_the_callers_time_zone() -> None:
    code = "from glm_guard._classify import reset_time; print(reset_time('您的限额将在 2026-12-05 08:00:00 重置'))"
    for zone in ("UTC", "America/New_York", "Asia/Shanghai"):
        out = subprocess.run(
            [sys.executable, "-c", code], env={"TZ": zone, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True
        )
        assert float(out.stdout) == datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC).timestamp(), out.stderr


@pytest.mark.parametrize(
    ("code", "kind", "pause"),
    [
        ("1308", "permanent", "quota"),
        ("1304", "permanent", "quota"),
        ("1310", "permanent", "quota"),
        ("1113", "permanent", "arrears"),
        ("1305", "rate_limit", "overload"),
        ("1312", "rate_limit", "overload"),
        ("1302", "rate_limit", None),
    ],
)
def test_what_each_code_pauses(code: str, kind: str, pause: str | None) -> None:
    info = DEFAULT_CLASSIFIER.classify(glm_error(code))
    assert (info.kind, info.pause) == (kind, pause)


def test_a_quota_error_carries_its_reset_time() -> None:
    info = DEFAULT_CLASSIFIER.classify(quota_error(3600))
    assert info.resets_at is not None
    assert 3500 < info.resets_at - time.time() < 3700


def test_the_guards_own_refusals_are_never_retried() -> None:
    for error in (
        QuotaExhausted("k", "1308", None, time.time() + 5),
        AccountInArrears("k", "1113", time.time() + 5),
        ModelOverloaded("k", "1305", time.time() + 5),
        glm_guard.RetryBudgetExhausted("k", 3),
    ):
        assert DEFAULT_CLASSIFIER.classify(error).kind == "guard_timeout"


# -- the decorator, on both backends -------------------------------------------------------------


def test_a_used_up_quota_refuses_until_its_reset_then_one_probe_reopens_the_key(backend: Backend) -> None:
    ran = []
    failing = [True]

    @retry_on_1302(max_tries=5, retry_budget=False)
    @rate_limited(10, 1.0, key="quota", backend=backend)
    def call() -> str:
        ran.append(time.monotonic())
        if failing[0]:
            raise quota_error(2)
        return "ok"

    with pytest.raises(ErrorWithText):
        call()  # the quota error itself, never retried
    assert len(ran) == 1
    with pytest.raises(QuotaExhausted) as refused:
        call()
    assert len(ran) == 1  # refused at once: nothing sent
    assert 0 < refused.value.retry_at - time.time() < 4
    assert isinstance(refused.value, GLMRateLimitException)
    failing[0] = False
    time.sleep(max(0.0, refused.value.retry_at - time.time()) + 0.3)
    assert call() == "ok"  # the probe, after the reset
    assert call() == "ok"  # and the key is open again
    assert len(ran) == 3


def test_arrears_let_one_probe_through_per_interval(backend: Backend) -> None:
    ran = 0
    lock = threading.Lock()

    @rate_limited(100, 1.0, key="arrears", backend=backend, arrears_pause=0.6)
    def call() -> None:
        nonlocal ran
        with lock:
            ran += 1
        time.sleep(0.05)
        raise glm_error("1113")

    with pytest.raises(ErrorWithText):
        call()
    outcomes: list[str] = []
    for _ in range(3):  # three intervals: each lets exactly one of eight callers through
        time.sleep(0.7)
        outcomes += probe_outcomes([call] * 8)
    assert outcomes.count("probed") == 3
    assert outcomes.count("refused") == 21
    assert ran == 4


async def test_an_overloaded_model_falls_back_at_once(backend: Backend) -> None:
    ran = 0

    @fallback(lambda: "smaller model")
    @retry_on_1302(max_tries=5, base_delay=0.01, retry_budget=False)
    @rate_limited(concurrency=4, key="glm:glm-4-plus", backend=backend, overload_pause=30)
    async def ask() -> str:
        nonlocal ran
        ran += 1
        raise glm_error("1305")

    assert await ask() == "smaller model"
    assert ran == 1  # the retry found the breaker open: no second request
    started = time.monotonic()
    answers = await asyncio.gather(*(ask() for _ in range(20)))
    assert answers == ["smaller model"] * 20
    assert ran == 1
    assert time.monotonic() - started < 5


# -- many processes share one pause --------------------------------------------------------------


@pytest.mark.redis
def test_a_pause_set_by_one_process_refuses_in_another(redis_url: str) -> None:
    first, second = RedisBackend(redis_url), RedisBackend(redis_url)
    try:
        ran = []

        def guarded(backend: RedisBackend):  # type: ignore[no-untyped-def]
            @rate_limited(100, 1.0, key="shared-arrears", backend=backend, arrears_pause=0.5)
            def call() -> None:
                ran.append(backend)
                raise glm_error("1113")

            return call

        with pytest.raises(ErrorWithText):
            guarded(first)()
        with pytest.raises(AccountInArrears):
            guarded(second)()
        assert ran == [first]
        time.sleep(0.6)
        outcomes = probe_outcomes([guarded(first), guarded(second)] * 4)
        assert outcomes.count("probed") == 1  # one probe for both processes
        assert len(ran) == 2
    finally:
        first.close()
        second.close()


@pytest.mark.redis
def test_a_probe_that_redis_answers_late_is_still_sent(own_redis: RedisServer) -> None:
    """A busy host answered the probe's admission late; the probe was given back as a late
    start, and the key stayed paused one more interval with nothing sent to the provider."""
    backend = RedisBackend(own_redis.url)
    ran = []
    failing = [True]

    @rate_limited(100, 1.0, key="late-probe", backend=backend, arrears_pause=0.5)
    def call() -> str:
        ran.append(time.monotonic())
        if failing[0]:
            raise glm_error("1113")
        return "ok"

    try:
        with pytest.raises(ErrorWithText):
            call()  # admitted at the usual round trip, then pauses the key
        time.sleep(0.6)
        failing[0] = False
        own_redis.pause()  # the probe's admission is answered 0.2 s late
        resume = threading.Timer(0.2, own_redis.resume)
        resume.start()
        assert call() == "ok"
        resume.join()
        assert call() == "ok"  # and the probe's success reopened the key
        assert len(ran) == 3
    finally:
        own_redis.resume()
        backend.close()


@pytest.mark.redis
def test_planted_pause_data_is_not_a_pause(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    try:
        client = backend.connections.client()
        client.set(backend.key("planted-pause", "paused"), "quota 9999999999999 1 1; redis.call('FLUSHALL')")

        @rate_limited(100, 1.0, key="planted-pause", backend=backend)
        def call() -> str:
            return "ok"

        assert call() == "ok"
    finally:
        backend.close()


# -- real SDKs against the simulator ------------------------------------------------------------


def test_the_openai_sdk_against_a_quota_window(backend: Backend) -> None:
    with run_simulator(api_keys=["sk-quota"], concurrency=4, latency=0.01) as sim:
        client = openai.OpenAI(api_key="sk-quota", base_url=sim.base_url, max_retries=0)

        @fallback(lambda question: "cached answer")
        @retry_on_1302(max_tries=5, base_delay=0.01)
        @rate_limited(concurrency="auto", key="glm:glm-4", backend=backend)
        def ask(question: str) -> str:
            answer = client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": question}])
            return answer.choices[0].message.content or ""

        sim.force_next("1308", 1)
        with pytest.raises(openai.RateLimitError):
            ask("first")  # the provider's own error passes, as permanent errors do; it pauses the key
        assert [ask(f"q{n}") for n in range(10)] == ["cached answer"] * 10
        assert sim.stats.total_requests == 1  # paused until the reset an hour ahead: nothing more sent

        @rate_limited(concurrency="auto", key="glm:glm-4", backend=backend)
        def unguarded_by_fallback() -> None:
            client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": "x"}])

        with pytest.raises(QuotaExhausted) as refused:
            unguarded_by_fallback()
        assert 3000 < refused.value.retry_at - time.time() < 3700
        assert sim.stats.total_requests == 1


def test_the_openai_sdk_against_arrears_and_overload(backend: Backend) -> None:
    with run_simulator(api_keys=["sk-arrears"], concurrency=4, latency=0.01) as sim:
        client = openai.OpenAI(api_key="sk-arrears", base_url=sim.base_url, max_retries=0)

        def guarded(model: str):  # type: ignore[no-untyped-def]
            @fallback(lambda: "fallback")
            @retry_on_1302(max_tries=5, base_delay=0.01)
            @rate_limited(concurrency=4, key=f"glm:{model}", backend=backend, arrears_pause=60, overload_pause=60)
            def ask() -> str:
                answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
                return answer.choices[0].message.content or ""

            return ask

        big, small = guarded("glm-4-plus"), guarded("glm-4-flash")
        sim.set_model_fault("glm-4-plus", "1305")
        assert [big() for _ in range(5)] == ["fallback"] * 5
        assert small() != "fallback"  # the breaker is the model's: another model still answers
        assert sim.stats.total_requests == 2
        sim.set_model_fault("glm-4-plus", None)
        sim.force_next("1113", 1, model="glm-4-flash")
        with pytest.raises(openai.RateLimitError):
            small()
        assert [small() for _ in range(5)] == ["fallback"] * 5
        assert sim.stats.total_requests == 3  # one 1113, never retried, then refused at once
