"""The provider's own rate-limit headers: a key waits for the reset instead of drawing a 429."""

from __future__ import annotations

import datetime
import time
from types import SimpleNamespace
from typing import Any

import pytest

from glm_guard import RateLimitTimeout, rate_limited
from glm_guard._provider_limits import headers_of, provider_wait
from glm_guard.backends._base import Backend
from glm_guard.backends._redis import RedisBackend

OPENAI_SPENT = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "800ms",
    "x-ratelimit-remaining-tokens": "90000",
    "x-ratelimit-reset-tokens": "1s",
}


def raw(headers: dict[str, str], total: int = 10) -> Any:
    """An answer shaped like an SDK's raw response: headers beside the parsed body's usage."""
    return SimpleNamespace(headers=headers, usage={"total_tokens": total})


def test_no_requests_left_makes_the_key_wait_for_the_reset(backend: Backend) -> None:
    answers = iter([raw(OPENAI_SPENT), raw({"x-ratelimit-remaining-requests": "59"})])

    @rate_limited(calls=100, period=60, backend=backend, max_wait=0)
    def call() -> Any:
        return next(answers)

    call()
    with pytest.raises(RateLimitTimeout):
        call()  # the provider said none is left for 800 ms
    time.sleep(0.9)
    call()


def test_fewer_tokens_left_than_the_call_reserves_waits(backend: Backend) -> None:
    headers = {"x-ratelimit-remaining-requests": "10", "x-ratelimit-remaining-tokens": "50"}
    headers["x-ratelimit-reset-tokens"] = "0.6s"

    @rate_limited(tokens=10_000, period=60, backend=backend, max_wait=0, estimate=lambda: 60)
    def call() -> Any:
        return raw(headers)

    call()
    with pytest.raises(RateLimitTimeout):
        call()
    time.sleep(0.7)
    call()


def test_anthropic_headers_name_the_reset_as_a_time(backend: Backend) -> None:
    reset = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.8)
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
    }

    @rate_limited(concurrency=4, backend=backend, max_wait=0)
    def call() -> Any:
        return {"headers": headers, "usage": {"input_tokens": 3, "output_tokens": 4}}

    call()
    with pytest.raises(RateLimitTimeout):
        call()


def test_plenty_left_changes_nothing(backend: Backend) -> None:
    headers = {"X-RateLimit-Remaining-Requests": "5", "X-RateLimit-Remaining-Tokens": "5000"}

    @rate_limited(tokens=10_000, period=60, backend=backend, max_wait=0, estimate=lambda: 60)
    def call() -> Any:
        return raw(headers)

    for _ in range(5):
        call()


@pytest.mark.redis
def test_what_one_process_hears_every_process_obeys_redis(redis_url: str) -> None:
    """Two backends on one Redis stand for two processes: the wait is the key's, not the process's."""
    first, second = RedisBackend(redis_url), RedisBackend(redis_url)
    try:

        @rate_limited(calls=100, period=60, key="told", backend=first)
        def told() -> Any:
            return raw(OPENAI_SPENT)

        @rate_limited(calls=100, period=60, key="told", backend=second, max_wait=0)
        def other() -> Any:
            return raw({})

        told()
        with pytest.raises(RateLimitTimeout):
            other()
    finally:
        first.close()
        second.close()


def test_reset_formats() -> None:
    now = 1_000.0
    assert (
        provider_wait({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 1, 1, now) == 360
    )
    assert (
        provider_wait({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30.5s"}, 1, 1, now)
        == 90.5
    )
    assert (
        provider_wait({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"}, 1, 1, now) == 0.02
    )
    assert provider_wait({"x-ratelimit-remaining-requests": "0"}, 1, 2.5, now) == 2.5  # Azure may name no reset
    later = datetime.datetime.fromtimestamp(now + 7, datetime.UTC).isoformat()
    assert (
        provider_wait(
            {"anthropic-ratelimit-tokens-remaining": "10", "anthropic-ratelimit-tokens-reset": later}, 50, 1, now
        )
        == 7
    )
    assert provider_wait({"x-ratelimit-remaining-tokens": "nonsense"}, 50, 1, now) == 0
    assert headers_of("text") is None
