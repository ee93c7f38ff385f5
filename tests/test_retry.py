"""``@retry_on_1302``: what is retried, how often, how long it sleeps, how it gives up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import glm_guard
from glm_guard import ConfigurationError, GLMRateLimitException, _retry, retry_on_1302

from .helpers import SEED_1113, SEED_1302, ErrorWithText
from .test_classify import glm_body, openai_error, zhipuai_error


class RetryAfterError(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(SEED_1302)
        self.headers = {"retry-after": str(seconds)}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff sleeps on a virtual clock instead of sleeping: deterministic, instant."""
    recorded: list[float] = []
    now = [1000.0]

    def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)
        now[0] += seconds

    async def fake_async_sleep(seconds: float) -> None:
        fake_sleep(seconds)

    monkeypatch.setattr(_retry, "_clock", lambda: now[0])
    monkeypatch.setattr(_retry, "_sleep", fake_sleep)
    monkeypatch.setattr(_retry, "_async_sleep", fake_async_sleep)
    return recorded


def flaky(failures: int, error: BaseException) -> tuple[list[int], Any]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "answer"

    return calls, call


def test_retries_until_success(sleeps: list[float]) -> None:
    calls, call = flaky(3, ErrorWithText(SEED_1302))
    assert retry_on_1302(5)(call)() == "answer"
    assert len(calls) == 4
    assert len(sleeps) == 3


def test_gives_up_after_max_tries_with_the_seeds_exception(sleeps: list[float]) -> None:
    original = ErrorWithText(SEED_1302)
    calls, call = flaky(100, original)
    with pytest.raises(GLMRateLimitException) as caught:
        retry_on_1302(4)(call)()
    assert len(calls) == 4
    assert caught.value.attempts == 4
    assert caught.value.code == "1302"
    assert caught.value.__cause__ is original


@pytest.mark.parametrize("text", [SEED_1113, '429 {"error":{"code":"1308","message":"limit resets at 12:00"}}'])
def test_permanent_errors_propagate_unchanged_after_one_attempt(sleeps: list[float], text: str) -> None:
    original = ErrorWithText(text)
    calls, call = flaky(100, original)
    with pytest.raises(ErrorWithText) as caught:
        retry_on_1302(5)(call)()
    assert caught.value is original
    assert len(calls) == 1 and sleeps == []


def test_unrelated_errors_are_not_retried(sleeps: list[float]) -> None:
    calls, call = flaky(100, ValueError("bug"))
    with pytest.raises(ValueError):
        retry_on_1302(5)(call)()
    assert len(calls) == 1


def test_full_jitter_stays_within_the_exponential_envelope(sleeps: list[float]) -> None:
    _, call = flaky(100, ErrorWithText(SEED_1302))
    with pytest.raises(GLMRateLimitException):
        retry_on_1302(6, base_delay=0.5, max_delay=3.0, retry_budget=False)(call)()  # 5 retries: past the floor
    envelope = [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(sleeps) == 5
    assert all(0 <= slept <= bound for slept, bound in zip(sleeps, envelope, strict=True))


def test_without_jitter_the_delays_are_exact(sleeps: list[float]) -> None:
    _, call = flaky(100, ErrorWithText(SEED_1302))
    with pytest.raises(GLMRateLimitException):
        retry_on_1302(5, base_delay=1.0, max_delay=5.0, jitter=False)(call)()
    assert sleeps == [1.0, 2.0, 4.0, 5.0]


def test_retry_after_is_honoured_without_jitter_and_capped(sleeps: list[float]) -> None:
    _, call = flaky(2, RetryAfterError(7))
    assert retry_on_1302(5, max_delay=60)(call)() == "answer"
    assert sleeps == [7.0, 7.0]
    sleeps.clear()
    _, call = flaky(1, RetryAfterError(90))
    retry_on_1302(5, max_delay=10)(call)()
    assert sleeps == [10.0]


def test_stops_at_once_when_retry_after_would_pass_max_time(sleeps: list[float]) -> None:
    calls, call = flaky(100, RetryAfterError(30))
    with pytest.raises(GLMRateLimitException, match="max_time") as caught:
        retry_on_1302(5, max_time=10)(call)()
    assert len(calls) == 1 and sleeps == []
    assert caught.value.retry_after == 30


def test_never_sleeps_past_max_time(sleeps: list[float]) -> None:
    _, call = flaky(100, ErrorWithText(SEED_1302))
    with pytest.raises(GLMRateLimitException):
        retry_on_1302(50, base_delay=1.0, max_delay=1.0, jitter=False, max_time=3.5)(call)()
    assert sleeps == [1.0, 1.0, 1.0]  # a fourth would end at 4.0 s, past max_time


async def test_async_functions_are_retried(sleeps: list[float]) -> None:
    calls: list[int] = []

    @retry_on_1302(3)
    async def call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ErrorWithText(SEED_1302)
        return "ok"

    assert asyncio.iscoroutinefunction(call)
    assert await call() == "ok"
    assert len(calls) == 3 and len(sleeps) == 2


def test_stacked_retries_do_not_multiply_attempts(sleeps: list[float]) -> None:
    calls: list[int] = []

    @retry_on_1302(3)
    def inner() -> None:
        calls.append(1)
        raise ErrorWithText(SEED_1302)

    @retry_on_1302(4)
    def outer() -> None:
        inner()

    with pytest.raises(GLMRateLimitException) as caught:
        outer()
    assert len(calls) == 4  # the outer layer's attempts, not 3 x 4
    assert caught.value.attempts == 4


def test_an_error_dict_result_is_retried_when_asked(sleeps: list[float]) -> None:
    answers = iter([{"error": {"code": "1302", "message": "x"}}, {"choices": ["ok"]}])

    @retry_on_1302(3, retry_on_result=True)
    def call() -> dict[str, Any]:
        return next(answers)

    assert call() == {"choices": ["ok"]}
    assert len(sleeps) == 1


def test_an_error_dict_result_is_returned_unless_asked(sleeps: list[float]) -> None:
    @retry_on_1302(3)
    def call() -> dict[str, Any]:
        return {"error": {"code": "1302"}}

    assert call() == {"error": {"code": "1302"}}


def test_configurable_codes(sleeps: list[float]) -> None:
    calls, call = flaky(2, ErrorWithText('{"error":{"code":"1234","message":"network"}}'))
    assert retry_on_1302(3, retry_codes=["1234", "1302"])(call)() == "answer"
    assert len(calls) == 3


def test_a_generator_is_retried_only_before_its_first_item(sleeps: list[float]) -> None:
    attempts: list[int] = []

    @retry_on_1302(3)
    def stream() -> Iterator[str]:
        attempts.append(1)
        if len(attempts) == 1:
            raise ErrorWithText(SEED_1302)
        yield "a"
        raise ErrorWithText(SEED_1302)

    chunks = stream()
    assert next(chunks) == "a"
    with pytest.raises(ErrorWithText):
        next(chunks)  # an error after the first item is surfaced, never retried
    assert len(attempts) == 2


async def test_an_async_generator_is_retried_only_before_its_first_item(sleeps: list[float]) -> None:
    attempts: list[int] = []

    @retry_on_1302(3)
    async def stream() -> AsyncIterator[str]:
        attempts.append(1)
        if len(attempts) < 3:
            raise ErrorWithText(SEED_1302)
        yield "a"
        yield "b"

    assert [chunk async for chunk in stream()] == ["a", "b"]
    assert len(attempts) == 3


def test_set_testing_removes_sleeps_and_caps_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(_retry, "_sleep", slept.append)
    calls, call = flaky(100, ErrorWithText(SEED_1302))
    with glm_guard.set_testing(True, attempts=2), pytest.raises(GLMRateLimitException):
        retry_on_1302(10, base_delay=5)(call)()
    assert len(calls) == 2
    assert slept == []
    assert not glm_guard.is_testing()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_tries": 0}, "max_tries"),
        ({"max_tries": -1}, "max_tries"),
        ({"max_time": 0}, "max_time"),
        ({"base_delay": -1}, "base_delay"),
        ({"max_delay": -1}, "max_delay"),
        ({"base_delay": 5, "max_delay": 1}, "max_delay"),
        ({"jitter": "yes"}, "jitter"),
        ({"retry_codes": "1302"}, "retry_codes"),
    ],
)
def test_bad_arguments_fail_at_decoration(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        retry_on_1302(**kwargs)
    assert caught.value.name == name


def test_real_sleep_is_bounded_by_max_delay() -> None:
    """One real (tiny) sleep, to show the un-faked path runs."""
    calls, call = flaky(1, ErrorWithText(SEED_1302))
    assert retry_on_1302(2, base_delay=0.01, max_delay=0.01)(call)() == "answer"
    assert len(calls) == 2


async def test_a_task_outliving_its_retried_parent_retries_on_its_own(sleeps: list[float]) -> None:
    attempts: list[int] = []

    @retry_on_1302(3)
    async def inner() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ErrorWithText(SEED_1302)
        return "ok"

    spawned: list[asyncio.Task[str]] = []
    release = asyncio.Event()

    async def later() -> str:
        await release.wait()  # runs only after the outer call has returned
        return await inner()

    @retry_on_1302(2)
    async def outer() -> None:
        spawned.append(asyncio.create_task(later()))  # copies the outer call's context

    await outer()
    release.set()
    assert await spawned[0] == "ok"
    assert len(attempts) == 3  # its own three attempts, not one


def test_cooldown_follows_the_retry_codes_of_the_stack(local_backend: Any) -> None:
    """One classifier per stack: codes retry_on_1302 names are what rate_limited pauses for, and what stats count."""
    from glm_guard import RateLimitTimeout, rate_limited

    seen: list[glm_guard.monitoring.GuardEvent] = []
    unsubscribe = glm_guard.subscribe(seen.append)

    @retry_on_1302(1, retry_codes=["9999"])
    @rate_limited(100, 1.0, key="custom-codes", backend=local_backend, cooldown=30, max_wait=0)
    def call(code: str) -> str:
        raise ErrorWithText(f'{{"error":{{"code":"{code}","message":"busy"}}}}')

    try:
        with pytest.raises(ErrorWithText):
            call("1302")  # not a rate limit for this stack: no retry, no pause
        with pytest.raises(ErrorWithText):
            call("1302")  # so the next call is admitted at once
        with pytest.raises(GLMRateLimitException) as caught:
            call("9999")  # a rate limit here: retried (once allowed), and the key pauses
        assert not isinstance(caught.value, RateLimitTimeout)
        with pytest.raises(RateLimitTimeout):
            call("9999")  # the cooldown holds every caller of the key
    finally:
        unsubscribe()
    attempts = [e for e in seen if isinstance(e, glm_guard.monitoring.AttemptEvent)]
    assert [e.error_kind for e in attempts] == ["other", "other", "rate_limit"]
    assert attempts[-1].code == "9999"


# -- quota windows, arrears, overload and the guard's own refusals ------------------------------

SDK_ERRORS = {"openai": openai_error, "zhipuai": zhipuai_error}


@pytest.mark.parametrize("sdk", sorted(SDK_ERRORS))
@pytest.mark.parametrize("code", ["1304", "1308", "1310", "1113"])
def test_quota_windows_and_arrears_from_real_sdks_are_tried_once(sleeps: list[float], sdk: str, code: str) -> None:
    original = SDK_ERRORS[sdk](429, glm_body(code, "您的限额将在 2026-12-05 08:00:00 重置"))
    calls, call = flaky(100, original)
    with pytest.raises(type(original)) as caught:
        retry_on_1302(5)(call)()
    assert caught.value is original
    assert len(calls) == 1 and sleeps == []


@pytest.mark.parametrize(
    "refusal",
    [
        glm_guard.QuotaExhausted("glm:glm-4", "1308", 1796428800.0, 1796428800.0),
        glm_guard.AccountInArrears("glm:glm-4", "1113", 1796428800.0),
        glm_guard.ModelOverloaded("glm:glm-4", "1305", 1796428800.0),
        glm_guard.RateLimitTimeout("glm:glm-4", 1.0, 5.0),
    ],
    ids=lambda refusal: type(refusal).__name__,
)
async def test_the_guards_own_refusals_are_tried_once(sleeps: list[float], refusal: GLMRateLimitException) -> None:
    calls, call = flaky(100, refusal)

    async def ask() -> str:
        return call()  # type: ignore[no-any-return]

    with pytest.raises(type(refusal)) as caught:
        await retry_on_1302(5)(ask)()
    assert caught.value is refusal
    assert len(calls) == 1 and sleeps == []


@pytest.mark.parametrize("code", ["1305", "1312"])
def test_an_overloaded_model_is_still_retried(sleeps: list[float], code: str) -> None:
    calls, call = flaky(2, openai_error(429, glm_body(code)))
    assert retry_on_1302(5, retry_budget=False)(call)() == "answer"
    assert len(calls) == 3 and len(sleeps) == 2
