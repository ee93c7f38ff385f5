"""The guarded GLM client: configuration, limits, retries, streaming, secrets, loops and fork."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import glm_guard
from glm_guard import ConfigurationError, GLMRateLimitException
from glm_guard._api_errors import GLMAPIError, GLMStreamError
from glm_guard._client import AsyncLLMClient, LLMClient, get_llm_client
from glm_guard.backends._redis import RedisBackend
from glm_guard.monitoring._recorder import RECORDER
from glm_guard.testing import GLMSimulator, RedisServer, run_simulator

KEY = "sk-client-secret-7b1e9c"
MSGS = [{"role": "user", "content": "你好 glm"}]


@pytest.fixture
def sim() -> Iterator[GLMSimulator]:
    with run_simulator(api_keys=[KEY], concurrency=2, latency=0.05, stream_chunk_delay=0) as s:
        yield s


@pytest.fixture
def env(sim: GLMSimulator, monkeypatch: pytest.MonkeyPatch) -> GLMSimulator:
    """The environment points get_llm_client() at the simulator, as a deployment's .env would."""
    monkeypatch.setenv("GLM_API_KEY", KEY)
    monkeypatch.setenv("GLM_API_BASE_URL", sim.base_url)
    monkeypatch.setenv("GLM_API_MAX_CONCURRENCY", "2")
    monkeypatch.setenv("GLM_GUARD_MAX_TRIES", "3")
    glm_guard.reload_settings()
    return sim


def content(response: dict[str, Any]) -> str:
    return str(response["choices"][0]["message"]["content"])


def stream_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


async def consume_all(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream]


# -- configuration ------------------------------------------------------------------------


def test_missing_key_fails_at_construction_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError) as exc:
        AsyncLLMClient()
    assert exc.value.name == "GLM_API_KEY"
    with pytest.raises(ConfigurationError):
        get_llm_client(sync=True)


def test_settings_from_the_environment_and_zhipuai_key_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHIPUAI_API_KEY", KEY)
    monkeypatch.setenv("GLM_API_MAX_CALLS_PER_MINUTE", "20")
    monkeypatch.setenv("GLM_API_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("GLM_API_MODEL", "glm-4-flash")
    glm_guard.reload_settings()
    client = get_llm_client()
    assert isinstance(client, AsyncLLMClient)
    assert client.base_url == "https://open.bigmodel.cn/api/paas/v4"
    assert (client.model, client.calls_per_minute, client.concurrency, client.max_tries) == ("glm-4-flash", 20, 3, 5)
    assert client._api_key == KEY
    overridden = LLMClient(api_key="other", base_url="http://127.0.0.1:9/v4/", model="m", concurrency=1, timeout=2)
    assert (overridden.base_url, overridden.model, overridden.concurrency, overridden.timeout) == (
        "http://127.0.0.1:9/v4",
        "m",
        1,
        2,
    )


def test_one_client_per_flavour_rebuilt_with_new_settings(env: GLMSimulator) -> None:
    first = get_llm_client()
    assert get_llm_client() is first
    sync = get_llm_client(sync=True)
    assert isinstance(sync, LLMClient)
    assert get_llm_client(sync=True) is sync
    sync.call_api(MSGS)
    glm_guard.reload_settings()
    assert get_llm_client() is not first
    assert get_llm_client(sync=True) is not sync
    assert sync._http is None  # the replaced sync client closed its connections


def test_a_bad_backend_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError) as exc:
        LLMClient(api_key=KEY, backend="memcached://x")
    assert exc.value.name == "backend"


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'glm-guard\[client\]'"):
        LLMClient(api_key=KEY)


# -- calls ----------------------------------------------------------------------------------


async def test_call_api_posts_the_seed_call_and_returns_the_json(env: GLMSimulator) -> None:
    client = get_llm_client()
    response = await client.call_api(messages=MSGS, temperature=0.7, max_tokens=2000)
    assert content(response).endswith("You said: 你好 glm")
    assert response["model"] == "glm-4"
    short = await client.call_api(MSGS, model="glm-4-flash", max_tokens=2, request_id="req-1")
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["request_id"] == "req-1"
    assert short["model"] == "glm-4-flash"


async def test_concurrent_calls_stay_within_the_limit(env: GLMSimulator) -> None:
    client = get_llm_client()
    results = await asyncio.gather(*(client.call_api([{"role": "user", "content": f"q{i}"}]) for i in range(10)))
    assert len({content(r) for r in results}) == 10
    stats = env.stats
    assert stats.rejected_total == 0
    assert stats.peak_in_flight == 2


async def test_with_no_concurrency_configured_the_client_learns_the_limit(
    sim: GLMSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a key and a URL, as a new user sets them: before the learned limit, 20 concurrent
    calls drew 52 1302s from a concurrency-2 account."""
    monkeypatch.setenv("GLM_API_KEY", KEY)
    monkeypatch.setenv("GLM_API_BASE_URL", sim.base_url)
    glm_guard.reload_settings()
    client = get_llm_client()
    assert client.concurrency == glm_guard.AutoConcurrency()
    for _ in range(2):  # 40 calls: within the default 60 per minute
        results = await asyncio.gather(*(client.call_api([{"role": "user", "content": f"q{i}"}]) for i in range(20)))
        assert len(results) == 20
    assert sim.stats.rejected_total <= 6  # slow start's overshoot and a probe, not one per call
    assert 1 <= (client_limit := glm_guard.backends.get_backend().limiter("glm:glm-4").learned_limit() or 0) <= 3, (
        client_limit
    )


async def test_1302_is_retried_and_the_seed_except_branch_catches_giving_up(env: GLMSimulator) -> None:
    client = get_llm_client()
    with glm_guard.set_testing(True):
        env.force_next("1302", 2)
        assert content(await client.call_api(MSGS))
        assert [r.code for r in env.history()] == ["1302", "1302", None]

        env.reset_stats()
        env.force_next("1302", 3)
        with pytest.raises(GLMRateLimitException) as exc:
            await client.call_api(MSGS)
    assert exc.value.code == "1302"
    assert exc.value.attempts == 3
    cause = exc.value.__cause__
    assert isinstance(cause, GLMAPIError)
    assert (cause.status_code, cause.code) == (429, "1302")
    assert cause.body["error"]["code"] == "1302"
    assert len(env.history()) == 3


async def test_permanent_errors_are_raised_once_unretried(env: GLMSimulator) -> None:
    client = get_llm_client()
    env.force_next("1113")
    with pytest.raises(GLMAPIError) as exc:
        await client.call_api(MSGS)
    assert (exc.value.status_code, exc.value.code) == (429, "1113")
    assert "1113" in str(exc.value)
    assert len(env.history()) == 1


def test_the_client_sends_through_the_guarded_transport(env: GLMSimulator) -> None:
    """One guarded HTTP path: the client's answers are the transport's, which marks a final
    error answer as not to be retried, and a give-up carries the server's last answer."""
    client = get_llm_client(sync=True)
    env.force_next("1113")
    with pytest.raises(GLMAPIError) as permanent:
        client.call_api(MSGS)
    assert permanent.value.headers["x-should-retry"] == "false"
    with glm_guard.set_testing(True):
        env.force_next("1302", 3)
        with pytest.raises(GLMRateLimitException) as gave_up:
            client.call_api(MSGS)
    cause = gave_up.value.__cause__
    assert isinstance(cause, GLMAPIError) and cause.headers["x-should-retry"] == "false"
    assert gave_up.value.attempts == 3
    client.close()


async def test_a_paused_key_is_refused_with_the_guards_own_error(env: GLMSimulator) -> None:
    """After a 1113 the key pauses; the transport refuses the next call without a request, and
    the client raises the refusal as the decorators did (``AccountInArrears``), not a 429."""
    client = get_llm_client()
    env.force_next("1113")
    with pytest.raises(GLMAPIError):
        await client.call_api(MSGS)
    with pytest.raises(glm_guard.AccountInArrears) as refused:
        await client.call_api(MSGS)
    assert isinstance(refused.value.__cause__, GLMAPIError)
    assert len(env.history()) == 1  # the refusal asked nobody


def test_sync_client_from_threads(env: GLMSimulator) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = get_llm_client(sync=True)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: client.call_api([{"role": "user", "content": f"t{i}"}]), range(8)))
    assert len(results) == 8
    assert env.stats.rejected_total == 0
    assert env.stats.peak_in_flight <= 2
    client.close()


# -- streaming ------------------------------------------------------------------------------


async def test_stream_yields_the_same_text_as_a_call(env: GLMSimulator) -> None:
    client = get_llm_client()
    whole = content(await client.call_api(MSGS))
    chunks = [c async for c in await client.call_api(MSGS, stream=True)]
    assert stream_text(chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] > 0


async def test_stream_failing_before_its_first_chunk_is_retried(env: GLMSimulator) -> None:
    client = get_llm_client()
    with glm_guard.set_testing(True):
        env.force_next("1302")
        env.fail_next_streams(after_chunks=0)
        chunks = [c async for c in await client.call_api(MSGS, stream=True)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [r.code for r in env.history()] == ["1302", None, None]
    assert env.stats.streams_failed == 1


async def test_stream_failing_after_output_is_surfaced_never_retried(env: GLMSimulator) -> None:
    client = get_llm_client()
    env.fail_next_streams(after_chunks=2)
    stream = await client.call_api(MSGS, stream=True)
    received: list[dict[str, Any]] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(GLMStreamError) as exc:
        await consume()
    assert len(received) == 2
    assert exc.value.reason == "network_error"
    assert (exc.value.chunks, exc.value.partial_chars) == (2, len(stream_text(received)))
    assert stream_text(received) not in str(exc.value)
    assert len(env.history()) == 1  # no second request: the text would have been repeated

    env.fail_next_streams(after_chunks=1, reason="disconnect")
    with pytest.raises(GLMStreamError) as lost:
        await consume_all(await client.call_api(MSGS, stream=True))
    assert lost.value.reason == "connection_lost"
    assert len(env.history()) == 2


async def test_a_stream_closed_early_gives_its_permit_back(env: GLMSimulator) -> None:
    client = AsyncLLMClient(concurrency=1)
    stream = await client.call_api(MSGS, stream=True)
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)  # inner generators are finalised by the loop
    assert content(await asyncio.wait_for(client.call_api(MSGS), 5))


def test_sync_stream_and_its_errors(env: GLMSimulator) -> None:
    client = get_llm_client(sync=True)
    chunks = list(client.call_api(MSGS, stream=True))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    with glm_guard.set_testing(True):
        env.fail_next_streams(after_chunks=0)
        assert stream_text(list(client.call_api(MSGS, stream=True))) == stream_text(chunks)
    env.fail_next_streams(after_chunks=1)
    with pytest.raises(GLMStreamError):
        list(client.call_api(MSGS, stream=True))
    env.force_next("1113")
    with pytest.raises(GLMAPIError):
        client.call_api(MSGS, stream=True)
    client.close()


# -- secrets --------------------------------------------------------------------------------


async def test_the_key_never_appears_in_reprs_errors_or_logs(
    env: GLMSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = get_llm_client()
    assert KEY not in repr(client)
    assert "api_key='***'" in repr(client)
    await client.call_api(MSGS)
    errors: list[BaseException] = []
    with glm_guard.set_testing(True):
        env.force_next("1302", 3)
        try:
            await client.call_api(MSGS)
        except GLMRateLimitException as error:
            errors += [error, error.__cause__ or error]
    env.force_next("1002")
    try:
        await client.call_api(MSGS)
    except GLMAPIError as error:
        errors.append(error)
    assert len(errors) == 3
    for error in errors:
        assert KEY not in str(error)
        assert KEY not in repr(error)
    assert "retrying" in caplog.text  # the retries were logged ...
    assert KEY not in caplog.text  # ... without the key
    assert KEY not in repr(glm_guard.get_settings())


# -- event loops and processes ----------------------------------------------------------------


def test_one_async_client_serves_successive_event_loops(env: GLMSimulator) -> None:
    client = get_llm_client()
    seen = []

    async def once() -> str:
        seen.append(await client._client())
        return content(await client.call_api(MSGS))

    assert asyncio.run(once()) == asyncio.run(once())
    assert seen[0] is not seen[1]  # connections are bound to their loop
    assert all(http.is_closed for http in seen)  # closed when each loop shut down
    gc.collect()  # an unclosed socket would raise ResourceWarning (an error here)


async def test_aclose_and_context_managers(env: GLMSimulator) -> None:
    async with AsyncLLMClient() as client:
        http = await client._client()
        await client.call_api(MSGS)
    assert http.is_closed
    assert content(await client.call_api(MSGS))  # reconnects
    await client.aclose()
    with LLMClient() as sync:
        sync.call_api(MSGS)
    assert sync._http is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connections(env: GLMSimulator) -> None:
    client = get_llm_client(sync=True)
    client.call_api(MSGS)
    parent_http = client._http
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns that the process has threads (the simulator's)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            answer = content(client.call_api(MSGS))
            ok = client._http is not parent_http
            os.write(write_fd, json.dumps({"answer": answer, "own": ok}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        result = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    assert result.get("own") is True
    assert result["answer"] == content(client.call_api(MSGS))
    assert client._http is parent_http  # the parent's pool is untouched
    client.close()


# -- stats across processes --------------------------------------------------------------------

CLIENT_WORKER = """
import asyncio, sys
from glm_guard import get_llm_client

calls, flavour = int(sys.argv[1]), sys.argv[2]
messages = [{"role": "user", "content": "hi"}]
if flavour == "sync":
    client = get_llm_client(sync=True)
    for _ in range(calls):
        client.call_api(messages)
else:
    async def main():
        client = get_llm_client()
        for _ in range(calls):
            await client.call_api(messages)
    asyncio.run(main())
"""


def test_client_calls_from_two_processes_reach_the_fleet_stats_redis(sim: GLMSimulator, redis_url: str) -> None:
    """Two workers configured by their environment only; ``glm-guard stats`` sees both."""
    env = {**os.environ, "GLM_API_KEY": KEY, "GLM_API_BASE_URL": sim.base_url}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT_WORKER, str(calls), flavour],
            env={**env, "GLM_GUARD_BACKEND": "redis", "REDIS_URL": redis_url},
            stderr=subprocess.PIPE,
            text=True,
        )
        for calls, flavour in ((3, "sync"), (4, "async"))
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    stats = subprocess.run(
        [sys.executable, "-m", "glm_guard", "stats", "--json"],
        env={**env, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert stats.returncode == 0, stats.stderr
    fleet = json.loads(stats.stdout)
    assert fleet["source"] == "redis"
    assert fleet["keys"]["glm:glm-4"]["calls"] == fleet["keys"]["glm:glm-4"]["successes"] == 7


def test_the_client_reports_to_the_redis_reloaded_settings_name_redis(
    env: GLMSimulator, redis_url: str, own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's backend comes from the environment: its stats follow the environment too."""
    monkeypatch.setenv("GLM_GUARD_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_url)
    glm_guard.reload_settings()
    for _ in range(2):
        get_llm_client(sync=True).call_api(MSGS)
    RECORDER.sync()
    monkeypatch.setenv("REDIS_URL", own_redis.url)
    glm_guard.reload_settings()
    for _ in range(3):
        get_llm_client(sync=True).call_api(MSGS)
    RECORDER.sync()
    get_llm_client(sync=True).close()
    counts = []
    for url in (redis_url, own_redis.url):
        store = RedisBackend(url)
        counts.append(store.shared_stats().totals().get("glm:glm-4", {}).get("calls"))
        store.close()
    assert counts == [2, 3]
