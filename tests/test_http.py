"""``glm_guard.http``: the guarded transports against the simulator, on every backend.

Permits held for the whole exchange and given back however it ends; 1302 retried inside the
transport; permanent errors sent once and then refused by the pause; the policy validated at
construction by the decorators' own code.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

import glm_guard
import glm_guard.http
from glm_guard import ConfigurationError, retry_on_1302
from glm_guard.backends._base import Backend
from glm_guard.testing import GLMSimulator, run_simulator

from .conftest import LimiterState

API_KEY = "sk-http-test-0000"
MODEL = "glm-4"
KEY = f"127.0.0.1:{MODEL}"
LIMIT = 2
FAST: dict[str, Any] = {"base_delay": 0.02, "max_delay": 0.1, "cooldown": 0.02}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def sim() -> Iterator[GLMSimulator]:
    with run_simulator(concurrency=LIMIT, latency=0.05, stream_chunk_delay=0.01) as s:
        yield s


def post(http: httpx.Client, sim: GLMSimulator, **body: Any) -> httpx.Response:
    return http.post(sim.chat_url, json={**BODY, **body}, headers={"Authorization": f"Bearer {API_KEY}"})


# -- the policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"concurrency": "lots"}, "concurrency"),
        ({"calls": 0}, "calls"),
        ({"period": 1.0}, "period"),
        ({"max_tries": 0}, "max_tries"),
        ({"max_delay": 0.1, "base_delay": 1.0}, "max_delay"),
        ({"key": ""}, "key"),
        ({"retry_budget": 3}, "retry_budget"),
    ],
)
def test_a_bad_policy_fails_at_construction_naming_its_parameter(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        glm_guard.http.client(**options)
    with pytest.raises(ConfigurationError, match=name):
        glm_guard.http.AsyncGuardedTransport(**options)


def test_an_unknown_keyword_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="concurency"):
        glm_guard.http.GuardedTransport(concurency=2)  # type: ignore[call-arg]


# -- admission -------------------------------------------------------------------------------------


def test_concurrency_is_held_at_the_server(sim: GLMSimulator, backend: Backend) -> None:
    with glm_guard.http.client(concurrency=LIMIT, backend=backend, **FAST) as http, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(http, sim).status_code, range(8)))
    assert statuses == [200] * 8
    assert sim.stats.rejected_total == 0
    assert sim.stats.peak_in_flight == LIMIT


def test_the_key_is_host_and_model_by_default_or_what_the_caller_says(
    sim: GLMSimulator, backend: Backend, limiter_state: LimiterState
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with (
        glm_guard.http.client(concurrency=LIMIT, backend=backend) as http,
        http.stream("POST", sim.chat_url, json=BODY, headers=auth),
    ):
        assert limiter_state.in_flight(KEY) == 1
    with glm_guard.http.client(concurrency=LIMIT, backend=backend, key=lambda request: "mine") as http:
        with http.stream("POST", sim.chat_url, json=BODY, headers={"Authorization": f"Bearer {API_KEY}"}):
            assert limiter_state.in_flight("mine") == 1
        assert limiter_state.in_flight("mine") == 0


def test_a_permit_is_held_until_the_body_is_read(
    sim: GLMSimulator, backend: Backend, limiter_state: LimiterState
) -> None:
    with glm_guard.http.client(concurrency=LIMIT, backend=backend) as http:
        request = http.build_request("POST", sim.chat_url, json=BODY, headers={"Authorization": f"Bearer {API_KEY}"})
        response = http.send(request, stream=True)
        assert limiter_state.in_flight(KEY) == 1
        response.read()
        assert limiter_state.in_flight(KEY) == 0
        assert response.json()["choices"]


def test_a_stream_closed_early_gives_its_permit_back(
    sim: GLMSimulator, backend: Backend, limiter_state: LimiterState
) -> None:
    client = openai.OpenAI(
        api_key=API_KEY, base_url=sim.base_url, http_client=glm_guard.http.client(concurrency=LIMIT, backend=backend)
    )
    stream = client.chat.completions.create(model=MODEL, messages=BODY["messages"], stream=True)
    next(iter(stream))
    assert limiter_state.in_flight(KEY) == 1  # held while the answer streams
    stream.close()
    assert limiter_state.in_flight(KEY) == 0
    client.close()


async def test_cancelling_a_reader_gives_its_permit_back(
    sim: GLMSimulator, backend: Backend, limiter_state: LimiterState
) -> None:
    sim.update(stream_chunk_delay=0.05)
    http = glm_guard.http.async_client(concurrency=LIMIT, backend=backend)
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=sim.base_url, http_client=http)
    reading = asyncio.Event()

    async def read() -> None:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a long answer " * 20}], stream=True
        )
        async for _ in stream:
            reading.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(reading.wait(), 5)
    assert limiter_state.in_flight(KEY) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter_state.in_flight(KEY) == 0

    waiting = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=BODY["messages"]))
    await asyncio.sleep(0.01)  # sent, not yet answered
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert limiter_state.in_flight(KEY) == 0
    await client.close()


# -- classification and retries -------------------------------------------------------------------


def test_a_1302_is_retried_inside_the_transport_and_taught_to_a_learned_limit(
    sim: GLMSimulator, backend: Backend
) -> None:
    client = openai.OpenAI(
        api_key=API_KEY, base_url=sim.base_url, http_client=glm_guard.http.client(backend=backend, **FAST)
    )
    sim.force_next("1302", 2)
    reply = client.chat.completions.create(model=MODEL, messages=BODY["messages"])
    assert reply.choices[0].message.content
    assert sim.stats.total_requests == 3
    assert sim.stats.rejected == {"1302": 2}
    client.close()


def test_when_the_transport_gives_up_the_sdk_does_not_retry(sim: GLMSimulator, backend: Backend) -> None:
    http = glm_guard.http.client(backend=backend, max_tries=2, **FAST)
    client = openai.OpenAI(api_key=API_KEY, base_url=sim.base_url, http_client=http)  # max_retries left at 2
    sim.force_next("1302", 10)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=BODY["messages"])
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert sim.stats.total_requests == 2
    client.close()


def test_a_learned_limit_is_taught_by_the_1302s(sim: GLMSimulator, backend: Backend) -> None:
    with (
        glm_guard.http.client(concurrency="auto", backend=backend, max_tries=8, **FAST) as http,
        ThreadPoolExecutor(6) as pool,
    ):
        statuses = list(pool.map(lambda _: post(http, sim).status_code, range(18)))
    assert statuses == [200] * 18
    learned = backend.limiter(KEY).learned_limit()
    assert learned is not None and learned >= 1


def test_retry_after_is_honoured(backend: Backend) -> None:
    with run_simulator(concurrency=LIMIT, latency=0.0, retry_after=0.3) as sim:
        with glm_guard.http.client(backend=backend, base_delay=0.0, max_delay=5.0) as http:
            sim.force_next("1302", 1)
            assert post(http, sim).status_code == 200
        first, second = sim.history()[:2]
    assert second.start - first.start >= 0.25


def test_arrears_are_sent_once_then_refused_without_a_request(sim: GLMSimulator, backend: Backend) -> None:
    client = openai.OpenAI(
        api_key=API_KEY, base_url=sim.base_url, http_client=glm_guard.http.client(backend=backend, **FAST)
    )
    sim.set_arrears(True)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=BODY["messages"])
    assert caught.value.code == "1113"  # the server's answer, as the SDK reads it
    assert sim.stats.total_requests == 1
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=BODY["messages"])
    assert refused.value.code == "1113"
    assert refused.value.response.headers["x-glm-guard"] == "refused"
    assert sim.stats.total_requests == 1  # the pause answered; the server was not asked
    client.close()


def test_inside_retry_on_1302_the_transport_makes_one_attempt(sim: GLMSimulator, backend: Backend) -> None:
    client = openai.OpenAI(
        api_key=API_KEY, base_url=sim.base_url, http_client=glm_guard.http.client(backend=backend, **FAST)
    )

    @retry_on_1302(max_tries=3, base_delay=0.02, max_delay=0.1)
    def ask() -> str:
        return client.chat.completions.create(model=MODEL, messages=BODY["messages"]).choices[0].message.content or ""

    sim.force_next("1302", 10)
    with pytest.raises(glm_guard.GLMRateLimitException):
        ask()
    assert sim.stats.total_requests == 3  # the decorator's three; neither the transport nor the SDK added any
    client.close()


def test_set_testing_turns_the_transport_guard_off(sim: GLMSimulator) -> None:
    glm_guard.set_testing(True)
    with glm_guard.http.client(concurrency=1) as http, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: post(http, sim), range(4)))
    assert sim.stats.peak_in_flight > 1


def test_an_answer_read_in_full_below_the_guard_gives_its_permit_back_at_once(
    backend: Backend, limiter_state: LimiterState
) -> None:
    answered = httpx.MockTransport(lambda request: httpx.Response(200, json={"choices": []}))
    with httpx.Client(transport=glm_guard.http.GuardedTransport(answered, key="mock", backend=backend)) as http:
        response = http.send(http.build_request("POST", "http://mock.invalid/", json=BODY), stream=True)
        assert limiter_state.in_flight("mock") == 0
        assert response.json() == {"choices": []}


@pytest.mark.parametrize(
    ("status", "body", "sent"),
    [
        (429, {"error": {"code": "rate_limit_exceeded", "type": "requests"}}, 3),  # OpenAI: retried
        (429, {"error": {"code": "insufficient_quota", "type": "insufficient_quota"}}, 1),  # OpenAI: never
        (529, {"type": "error", "error": {"type": "overloaded_error"}}, 1),  # Anthropic: the model's breaker opens
        (429, {"error": {"code": "1113", "message": "arrears"}}, 1),  # the body's code wins over 429
        (200, {"choices": []}, 1),
    ],
)
def test_openai_and_anthropic_bodies_are_read_like_glm_s(status: int, body: dict[str, Any], sent: int) -> None:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, json=body)

    policy: dict[str, Any] = {**FAST, "max_tries": 3, "key": "mock", "overload_pause": 5.0}
    with httpx.Client(transport=glm_guard.http.GuardedTransport(httpx.MockTransport(answer), **policy)) as http:
        response = http.post("http://mock.invalid/", json=BODY)
    assert len(requests) == sent
    assert response.status_code == status
    assert response.headers.get("x-should-retry") == (None if status == 200 else "false")


def test_retry_after_ms_is_honoured() -> None:
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        if len(sent) == 1:
            return httpx.Response(429, json={"error": {"code": "1302"}}, headers={"retry-after-ms": "300"})
        return httpx.Response(200, json={"choices": []})

    transport = glm_guard.http.GuardedTransport(httpx.MockTransport(answer), key="mock", base_delay=0.0, cooldown=0)
    with httpx.Client(transport=transport) as http:
        assert http.post("http://mock.invalid/", json=BODY).status_code == 200
    assert sent[1] - sent[0] >= 0.25


def test_the_providers_rate_limit_headers_are_followed_at_the_http_layer(backend: Backend) -> None:
    """OpenAI's ``x-ratelimit-remaining-requests: 0`` pauses the key until the reset the header
    names, so the openai client through the transport never draws the RPM's 429."""
    import openai

    from glm_guard.testing import run_provider_simulator

    with run_provider_simulator("openai", rpm=5, period=1.0) as sim:
        http = glm_guard.http.client(concurrency=1, backend=backend, max_tries=1)
        client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0, http_client=http)
        for _ in range(8):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        http.close()
        assert sim.limited == 0
        assert len(sim.requests) == 8


# -- what issue 14 pins: the policy's names, its backend and budget, timeouts, late 1302s ------------

#: What the decorators take that the transport does not, and why (docs/http.md): token budgets
#: read the call's arguments and parsed answer; ``retry_on_result`` the function's return value.
NOT_AT_THE_HTTP_LAYER = {"tokens", "estimate", "tokenizer", "refund_unused", "tokens_of", "retry_on_result"}


def test_the_policy_keywords_are_the_decorators_own_names_and_defaults() -> None:
    """The names are a contract users code against: same names, same defaults, nothing extra.

    The decorators spell out their first parameters and take the rest as typed ``**options``;
    the transport takes the same groups of options, so both are read from the signatures and
    the option types."""
    from glm_guard._rate_limit import LimitOptions
    from glm_guard._retry import RetryOptions
    from glm_guard.http._policy import Policy, PolicyOptions, SharedOptions

    def spelt_out(fn: Any) -> dict[str, Any]:
        return {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD}

    decorators = {**spelt_out(glm_guard.rate_limited), **spelt_out(glm_guard.retry_on_1302)}
    names = set(decorators) | LimitOptions.__optional_keys__ | RetryOptions.__optional_keys__
    assert set(PolicyOptions.__optional_keys__) == names - NOT_AT_THE_HTTP_LAYER
    assert spelt_out(Policy) == decorators  # calls, period, key, backend, max_tries
    assert SharedOptions.__optional_keys__ == names - NOT_AT_THE_HTTP_LAYER - set(decorators)
    with pytest.raises(TypeError, match="tokens"):  # nothing extra: a decorator-only keyword is refused
        glm_guard.http.client(tokens=1000)


def test_with_no_backend_the_environment_chooses_it(
    sim: GLMSimulator, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    monkeypatch.setenv("GLM_GUARD_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_url)
    glm_guard.reload_settings()
    leases = f"{glm_guard.get_settings().key_prefix}{{{KEY}}}:leases"
    store = redis.Redis.from_url(redis_url)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    try:
        with (
            glm_guard.http.client(concurrency=LIMIT) as http,
            http.stream("POST", sim.chat_url, json=BODY, headers=auth),
        ):
            assert store.zcard(leases) == 1  # the permit is in Redis, as GLM_GUARD_BACKEND says
        assert store.zcard(leases) == 0
    finally:
        store.close()


def test_the_retry_budget_bounds_the_transports_retries(backend: Backend) -> None:
    sent: list[httpx.Request] = []

    def always_1302(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(429, json={"error": {"code": "1302", "message": "busy"}})

    policy: dict[str, Any] = {
        "key": "budget",
        "backend": backend,
        "max_tries": 4,
        "base_delay": 0.0,
        "max_delay": 0.0,
        "cooldown": 0,
    }
    budget = glm_guard.RetryBudgetPolicy(ratio=0.0, min_retries=2, window=30)
    transport = glm_guard.http.GuardedTransport(httpx.MockTransport(always_1302), retry_budget=budget, **policy)
    with httpx.Client(transport=transport) as http:
        answers = [http.post("http://mock.invalid/", json=BODY) for _ in range(5)]
    assert len(sent) == 5 + 2  # one attempt per call, and the budget's two retries
    assert [a.headers["x-should-retry"] for a in answers] == ["false"] * 5
    assert isinstance(answers[-1].extensions["glm_guard.gave_up"], glm_guard.RetryBudgetExhausted)

    sent.clear()
    unbounded = glm_guard.http.GuardedTransport(httpx.MockTransport(always_1302), retry_budget=False, **policy)
    with httpx.Client(transport=unbounded) as http:
        for _ in range(5):
            http.post("http://mock.invalid/", json=BODY)
    assert len(sent) == 5 * 4


@pytest.mark.parametrize("stream", [False, True], ids=["waiting", "streaming"])
def test_a_client_timeout_gives_the_permit_back(stream: bool, backend: Backend, limiter_state: LimiterState) -> None:
    """httpx's own read timeout, waiting for the answer or between two chunks of its stream."""
    with run_simulator(concurrency=LIMIT, latency=0.0 if stream else 1.0, stream_chunk_delay=1.0) as sim:
        http = glm_guard.http.client(concurrency=LIMIT, backend=backend, timeout=httpx.Timeout(5.0, read=0.3))
        client = openai.OpenAI(api_key=API_KEY, base_url=sim.base_url, http_client=http, max_retries=0)

        def ask() -> None:
            reply = client.chat.completions.create(model=MODEL, messages=BODY["messages"], stream=stream)
            for _ in reply:  # type: ignore[union-attr]
                pass

        with pytest.raises(openai.APITimeoutError):
            ask()
        assert limiter_state.in_flight(KEY) == 0
        client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["waiting", "streaming"])
async def test_an_async_client_timeout_gives_the_permit_back(
    stream: bool, backend: Backend, limiter_state: LimiterState
) -> None:
    with run_simulator(concurrency=LIMIT, latency=0.0 if stream else 1.0, stream_chunk_delay=1.0) as sim:
        http = glm_guard.http.async_client(concurrency=LIMIT, backend=backend, timeout=httpx.Timeout(5.0, read=0.3))
        client = openai.AsyncOpenAI(api_key=API_KEY, base_url=sim.base_url, http_client=http, max_retries=0)

        async def ask() -> None:
            reply = await client.chat.completions.create(model=MODEL, messages=BODY["messages"], stream=stream)
            async for _ in reply:  # type: ignore[union-attr]
                pass

        with pytest.raises(openai.APITimeoutError):
            await ask()
        assert limiter_state.in_flight(KEY) == 0
        await client.close()


class _LateError(httpx.SyncByteStream):
    """A 200 stream whose first chunk is content and whose second is a 1302 error event."""

    def __iter__(self) -> Iterator[bytes]:
        yield b'data: {"id": "1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
        yield b'data: {"error": {"code": "1302", "message": "busy"}}\n\n'


def test_a_1302_after_the_first_chunk_is_not_retried(backend: Backend, limiter_state: LimiterState) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_LateError())

    transport = glm_guard.http.GuardedTransport(
        httpx.MockTransport(answer), key="late", concurrency=LIMIT, backend=backend, **FAST
    )
    client = openai.OpenAI(
        api_key=API_KEY, base_url="http://mock.invalid/v4", http_client=httpx.Client(transport=transport)
    )
    stream = client.chat.completions.create(model=MODEL, messages=BODY["messages"], stream=True)

    def read() -> None:
        for _ in stream:
            assert limiter_state.in_flight("late") == 1  # held while it streams

    with pytest.raises(openai.APIError, match="busy"):
        read()
    stream.close()
    assert len(sent) == 1  # the answer had begun: the caller sees the error, nothing is resent
    assert limiter_state.in_flight("late") == 0
    client.close()
