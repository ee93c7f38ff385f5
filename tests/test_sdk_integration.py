"""The real SDKs against the simulator: unguarded they see 1302s, guarded they see none.

Also the SDKs' own retries: how they multiply the guard's attempts, the helper that turns
them off, and the warning for a retried call whose client still has them on.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import zhipuai

import glm_guard
from glm_guard import _sdk, rate_limited, retry_on_1302
from glm_guard._sdk import SDKRetryWarning, sdk_retries_off, sdk_retry_warning
from glm_guard.testing import GLMSimulator, run_simulator

KEY = "sk-sdk-test-0000"
MODEL = "glm-4"
LIMIT = 2
CALLS = 10
MSGS: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def sim() -> Iterator[GLMSimulator]:
    with run_simulator(concurrency=LIMIT, latency=0.1, stream_chunk_delay=0) as s:
        yield s


@pytest.fixture(autouse=True)
def _fresh_warning_state() -> Iterator[None]:
    _sdk._warned.clear()
    yield
    _sdk._warned.clear()


def guard(fn: Callable[..., Any]) -> Any:
    """The recommended stack, at the simulator's limit."""
    return retry_on_1302(max_tries=5, base_delay=0.05, max_delay=0.5)(
        rate_limited(concurrency=LIMIT, key=f"glm:{MODEL}")(fn)
    )


def run_threads(call: Callable[[int], Any]) -> list[BaseException | None]:
    with ThreadPoolExecutor(CALLS) as pool:
        futures = [pool.submit(call, i) for i in range(CALLS)]
    return [f.exception(timeout=30) for f in futures]


async def test_openai_async_unguarded_sees_1302_guarded_none(sim: GLMSimulator) -> None:
    async with openai.AsyncOpenAI(api_key=KEY, base_url=sim.base_url, max_retries=0, timeout=10) as client:

        async def ask(i: int) -> str:
            reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"{i}"}])
            return reply.choices[0].message.content or ""

        raw = await asyncio.gather(*(ask(i) for i in range(CALLS)), return_exceptions=True)
        assert sum(isinstance(r, openai.RateLimitError) for r in raw) >= CALLS - LIMIT
        assert sim.stats.rejected["1302"] >= CALLS - LIMIT

        sim.reset_stats()
        answers = await asyncio.gather(*(guard(ask)(i) for i in range(CALLS)))
    assert all(answers)
    assert sim.stats.rejected_total == 0
    assert sim.stats.completed == CALLS
    assert sim.stats.peak_in_flight == LIMIT


def test_openai_sync_threads_unguarded_sees_1302_guarded_none(sim: GLMSimulator) -> None:
    with openai.OpenAI(api_key=KEY, base_url=sim.base_url, max_retries=0, timeout=10) as client:

        def ask(i: int) -> str:
            reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"{i}"}])
            return reply.choices[0].message.content or ""

        unguarded = run_threads(ask)
        assert any(isinstance(e, openai.RateLimitError) and e.code == "1302" for e in unguarded)

        sim.reset_stats()
        assert run_threads(guard(ask)) == [None] * CALLS
    assert sim.stats.rejected_total == 0
    assert sim.stats.peak_in_flight <= LIMIT


def test_zhipuai_threads_unguarded_sees_1302_guarded_none(sim: GLMSimulator) -> None:
    client = zhipuai.ZhipuAI(api_key=KEY, base_url=sim.base_url, max_retries=0, timeout=10)
    try:

        def ask(i: int) -> str:
            reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"{i}"}])
            return str(reply.choices[0].message.content)

        unguarded = run_threads(ask)
        assert any(isinstance(e, zhipuai.APIReachLimitError) for e in unguarded)

        sim.reset_stats()
        assert run_threads(guard(ask)) == [None] * CALLS
    finally:
        client.close()
    assert sim.stats.rejected_total == 0
    assert sim.stats.completed == CALLS
    assert sim.stats.peak_in_flight <= LIMIT


def test_sdk_retries_multiply_the_guards_attempts() -> None:
    """With openai's default max_retries=2, each of the guard's 2 attempts is 3 requests."""
    # A short Retry-After keeps openai's own waits short.
    with run_simulator(latency=0, retry_after=0.01) as s, openai.OpenAI(api_key=KEY, base_url=s.base_url) as client:

        @retry_on_1302(max_tries=2)
        def ask() -> object:
            return client.chat.completions.create(model=MODEL, messages=MSGS)

        s.force_next("1302", 100)
        with glm_guard.set_testing(True), pytest.raises(glm_guard.GLMRateLimitException):
            ask()
        assert s.stats.rejected["1302"] == 6

        s.reset_stats()
        quiet = sdk_retries_off(client)

        @retry_on_1302(max_tries=2)
        def ask_quietly() -> object:
            return quiet.chat.completions.create(model=MODEL, messages=MSGS)

        with glm_guard.set_testing(True), pytest.raises(glm_guard.GLMRateLimitException):
            ask_quietly()
        assert s.stats.rejected["1302"] == 2
        s.clear_faults()


def test_sdk_retries_off_copies_openai_and_sets_zhipuai_in_place() -> None:
    with openai.OpenAI(api_key=KEY, base_url="http://127.0.0.1:9/v4") as client:
        quiet = sdk_retries_off(client)
        assert quiet is not client
        assert (client.max_retries, quiet.max_retries) == (2, 0)
    z = zhipuai.ZhipuAI(api_key=KEY, base_url="http://127.0.0.1:9/v4")
    try:
        assert z.max_retries == 3
        assert sdk_retries_off(z) is z
        assert z.max_retries == 0
    finally:
        z.close()
    with pytest.raises(TypeError):
        sdk_retries_off(object())


def test_retry_warning_names_a_client_with_its_retries_on() -> None:
    with openai.OpenAI(api_key=KEY, base_url="http://127.0.0.1:9/v4") as client:
        with pytest.warns(SDKRetryWarning, match=r"max_retries=2.*sdk_retries_off"):
            sdk_retry_warning((client, "question"), {}, name="ask")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sdk_retry_warning((client,), {}, name="ask")  # once per client type
            sdk_retry_warning((client.with_options(max_retries=0),), {})

    class Reasoner:  # the usual shape: the client lives on the bound self
        def __init__(self) -> None:
            self.client = zhipuai.ZhipuAI(api_key=KEY, base_url="http://127.0.0.1:9/v4")

    reasoner = Reasoner()
    try:
        with pytest.warns(SDKRetryWarning, match="zhipuai"):
            sdk_retry_warning((reasoner, "q"), {})
    finally:
        reasoner.client.close()


def test_retry_warning_ignores_what_is_not_an_sdk_client() -> None:
    class Settings:
        max_retries = 3  # not a client: no chat API

    class Broken:
        @property
        def max_retries(self) -> int:
            raise RuntimeError("boom")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdk_retry_warning((Settings(), Broken(), 1, "x", None), {"cfg": Settings()})
    with (
        openai.OpenAI(api_key=KEY, base_url="http://127.0.0.1:9/v4", max_retries=0) as client,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error")
        sdk_retry_warning((), {"client": client})


def test_a_retried_call_whose_client_retries_warns_once() -> None:
    from glm_guard import _retry

    if not hasattr(_retry, "sdk_retry_warning"):
        pytest.skip("retry_on_1302 does not call sdk_retry_warning yet")
    with run_simulator(latency=0, retry_after=0.01) as s, openai.OpenAI(api_key=KEY, base_url=s.base_url) as client:

        @retry_on_1302(max_tries=3)
        def ask(sdk: openai.OpenAI) -> object:
            return sdk.chat.completions.create(model=MODEL, messages=MSGS)

        s.force_next("1302", 3)  # openai's own three attempts fail, so the guard retries
        with glm_guard.set_testing(True), pytest.warns(SDKRetryWarning, match="max_retries=2"):
            ask(client)
        with glm_guard.set_testing(True), warnings.catch_warnings():
            warnings.simplefilter("error")
            s.force_next("1302", 3)
            ask(client)  # once per client type
