"""The provider simulator (OpenAI, Azure OpenAI, Anthropic styles), and the guard against it."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import httpx
import openai
import pytest

from glm_guard import rate_limited
from glm_guard.backends._base import Backend
from glm_guard.testing import run_provider_simulator

from .test_tokens import most_tokens_in_window

HELLO = [{"role": "user", "content": "Say hello."}]


class Answer(NamedTuple):
    """What a guarded call returns so the guard sees both the headers and the usage."""

    headers: Any
    usage: Any
    text: str


def test_openai_style_limits_requests_with_real_headers_and_bodies() -> None:
    with run_provider_simulator("openai", rpm=3, tpm=10_000, period=5.0) as sim:
        client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(10_000 - (3 + 4 + 3 + 10))
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert raw.parse().usage.completion_tokens == 10
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert refused.value.code == "rate_limit_exceeded"
        assert "requests per min (RPM)" in refused.value.message
        assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_openai_style_counts_prompt_and_max_tokens_and_runs_out_of_quota() -> None:
    with run_provider_simulator("openai", tpm=100, period=5.0) as sim:
        client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=60)  # 70 counted
        with pytest.raises(openai.RateLimitError, match="TPM"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=60)
        sim.exhaust_quota()
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=1)
        assert refused.value.code == "insufficient_quota"


def test_azure_style_answers_the_azure_client() -> None:
    with run_provider_simulator("azure", rpm=1, period=5.0) as sim:
        client = openai.AzureOpenAI(
            api_key="azure-key", azure_endpoint=sim.base_url, api_version="2024-10-21", max_retries=0
        )
        answer = client.chat.completions.create(model="my-gpt-4o", messages=HELLO, max_tokens=5)
        assert answer.usage is not None and answer.usage.completion_tokens == 5
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="my-gpt-4o", messages=HELLO)
        assert refused.value.response.headers["retry-after"]


def test_anthropic_style_sends_its_headers_and_overloaded_error() -> None:
    with run_provider_simulator("anthropic", rpm=10, tpm=5_000, period=5.0) as sim:
        request = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": HELLO}
        headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
        with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5) as client:
            answer = client.post("/v1/messages", json=request)
            assert answer.status_code == 200
            assert answer.json()["usage"] == {"input_tokens": 10, "output_tokens": 8}
            assert answer.headers["anthropic-ratelimit-requests-remaining"] == "9"
            assert answer.headers["anthropic-ratelimit-input-tokens-remaining"] == str(5_000 - 18)
            assert answer.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
            sim.overload_next()
            overloaded = client.post("/v1/messages", json=request)
            assert overloaded.status_code == 529
            assert overloaded.json()["error"]["type"] == "overloaded_error"


def test_the_token_budget_at_the_tpm_draws_no_429(backend: Backend) -> None:
    """Twenty threads, a budget equal to the provider's TPM: every call waits for tokens, none is refused.

    Like OpenAI, the simulator counts ``max_tokens`` when a request arrives and gives nothing
    back, so the guard keeps each call's whole estimate (``refund_unused=False``).
    The guard's window is a little longer than the provider's (1.2 s against 1 s): a request
    reaches the provider some milliseconds after it starts, and those differ per request.
    """
    with run_provider_simulator("openai", tpm=400, period=1.0) as sim:
        client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0)

        @rate_limited(tokens=400, period=1.2, backend=backend, refund_unused=False)  # OpenAI counts max_tokens
        def ask(**request: Any) -> Answer:
            raw = client.chat.completions.with_raw_response.create(**request)
            completion = raw.parse()
            return Answer(raw.headers, completion.usage, completion.choices[0].message.content or "")

        errors: list[BaseException] = []

        def run() -> None:
            try:
                for _ in range(2):
                    ask(model="gpt-4o-mini", messages=HELLO, max_tokens=90)  # 100 counted by both
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        assert sim.limited == 0
        assert len(sim.requests) == 20
        assert most_tokens_in_window(sim.requests, 1.0, slack=0.0) <= 400


def test_headers_alone_keep_calls_under_the_rpm(backend: Backend) -> None:
    """No budget in the guard: the provider's remaining-requests header is what stops the sixth call."""
    with run_provider_simulator("openai", rpm=5, period=1.0) as sim:
        client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0)

        @rate_limited(concurrency=1, backend=backend)
        def ask() -> Any:
            return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)

        for _ in range(8):
            ask()
        assert sim.limited == 0
        assert len(sim.requests) == 8


def test_the_azure_example_keeps_the_per_second_check(backend: Backend) -> None:
    with run_provider_simulator("azure", rpm=5, period=1.0) as sim:
        client = openai.AzureOpenAI(
            api_key="azure-key", azure_endpoint=sim.base_url, api_version="2024-10-21", max_retries=0
        )

        @rate_limited(10, 2.0, burst=(4, 1.2), tokens=8_000, backend=backend)
        def ask(**request: Any) -> Any:
            return client.chat.completions.create(model="my-gpt-4o", **request)

        for _ in range(8):
            ask(messages=HELLO, max_tokens=20)
        assert sim.limited == 0  # 4 per 1.2 s never meets the provider's 5 per 1 s


def test_the_anthropic_example_reads_headers_from_an_httpx_response(backend: Backend) -> None:
    with run_provider_simulator("anthropic", rpm=3, period=1.0) as sim:
        headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
        with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5) as http:

            @rate_limited(tokens=20_000, period=60, backend=backend)
            def ask(**request: Any) -> httpx.Response:
                answer = http.post("/v1/messages", json=request)
                answer.raise_for_status()
                return answer

            for _ in range(6):
                ask(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO)
        assert sim.limited == 0  # the third answer said none was left: the fourth waited for the reset


def test_answers_are_as_long_as_answer_tokens_says_or_max_tokens_when_less() -> None:
    with run_provider_simulator("openai", answer_tokens=50, period=5.0) as sim:
        client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0)
        long = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=300)
        short = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10)
        assert long.usage is not None and long.usage.completion_tokens == 50
        assert short.usage is not None and short.usage.completion_tokens == 10
        assert [tokens for _, tokens in sim.requests] == [10 + 300, 10 + 10]  # max_tokens counted on arrival
