"""``rate_limited(tokens=...)``: reserve an estimate, settle from ``usage``, on every backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from glm_guard import ConfigurationError, RateLimitTimeout, count_tokens, rate_limited, token_estimate
from glm_guard._token_budget import by_characters, estimate_call, tokens_used
from glm_guard.backends._base import Backend


def most_tokens_in_window(spent: Sequence[tuple[float, int]], period: float, slack: float = 0.03) -> int:
    """The most tokens started in any window of ``period - slack`` seconds (see ``max_in_window``)."""
    ordered = sorted(spent)
    width = period - slack
    best = total = low = 0
    for start, tokens in ordered:
        total += tokens
        while ordered[low][0] <= start - width:
            total -= ordered[low][1]
            low += 1
        best = max(best, total)
    return best


def answer(tokens: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": tokens - 1, "total_tokens": tokens}}


def test_threads_never_start_more_tokens_than_the_budget_in_any_window(backend: Backend) -> None:
    spent: list[tuple[float, int]] = []
    lock = threading.Lock()

    @rate_limited(tokens=100, period=0.5, backend=backend)
    def call(*, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        with lock:
            spent.append((time.monotonic(), max_tokens))
        return answer(max_tokens)  # used all it reserved, less the estimate's prompt overhead

    def run(i: int) -> None:
        with token_estimate(20 + (i % 3) * 10):
            call(messages=[], max_tokens=20 + (i % 3) * 10)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(spent) == 24
    assert most_tokens_in_window(spent, 0.5) <= 100


def test_tasks_never_start_more_tokens_than_the_budget_in_any_window(backend: Backend) -> None:
    spent: list[tuple[float, int]] = []

    @rate_limited(tokens=90, period=0.4, backend=backend, estimate=lambda size: size)
    async def call(size: int) -> dict[str, Any]:
        spent.append((time.monotonic(), size))
        await asyncio.sleep(0.01)
        return answer(size)

    async def run() -> None:
        await asyncio.gather(*(call(10 + (i % 4) * 10) for i in range(30)))

    asyncio.run(asyncio.wait_for(run(), 20))
    assert len(spent) == 30
    assert most_tokens_in_window(spent, 0.4) <= 90


def test_usage_below_the_estimate_gives_the_rest_back_at_once(backend: Backend) -> None:
    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 60)
    def call() -> dict[str, Any]:
        return answer(10)

    call()
    call()  # 10 counted, not 60: 60 more fit without waiting for the window


def test_refund_unused_false_keeps_the_estimate_but_counts_more(backend: Backend) -> None:
    used = iter([10, 90])

    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 30, refund_unused=False)
    def call() -> dict[str, Any]:
        return answer(next(used))

    call()  # used 10: 30 stay counted
    call()  # used 90: 90 counted, 120 in all
    with pytest.raises(RateLimitTimeout), token_estimate(1):
        call()


def test_usage_above_the_estimate_is_counted(backend: Backend) -> None:
    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 30)
    def call() -> dict[str, Any]:
        return answer(90)

    call()
    with pytest.raises(RateLimitTimeout):
        call()  # 90 used: 30 more would pass the budget


def test_a_failed_call_gives_its_reservation_back(backend: Backend) -> None:
    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda fail: 70)
    def call(fail: bool) -> dict[str, Any]:
        if fail:
            raise RuntimeError("boom")
        return answer(70)

    with pytest.raises(RuntimeError):
        call(True)
    call(False)
    with pytest.raises(RateLimitTimeout):
        call(False)


def test_a_cancelled_call_gives_its_reservation_back(backend: Backend) -> None:
    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 70)
    async def call() -> dict[str, Any]:
        await asyncio.sleep(10)
        return answer(70)

    async def run() -> None:
        task = asyncio.create_task(call())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with token_estimate(80), pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await call()  # admitted at once (the 70 came back), then times out in its sleep

    asyncio.run(asyncio.wait_for(run(), 10))


def test_an_answer_without_usage_keeps_its_estimate(backend: Backend) -> None:
    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 60)
    def call() -> str:
        return "no usage here"

    call()
    with pytest.raises(RateLimitTimeout):
        call()


def test_an_estimate_above_the_whole_budget_fails_at_once(backend: Backend) -> None:
    @rate_limited(tokens=1000, period=60, backend=backend)
    def call(*, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        raise AssertionError("never called")

    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"estimate of \d+ tokens exceeds the whole budget of 1000") as raised:
        call(messages=[{"role": "user", "content": "hi"}], max_tokens=4000)
    assert raised.value.name == "tokens"
    assert time.monotonic() - started < 1


def test_tokens_alone_set_no_limit_on_calls(backend: Backend) -> None:
    @rate_limited(tokens=10_000, period=60, backend=backend, max_wait=0, estimate=lambda: 1)
    def call() -> dict[str, Any]:
        return answer(1)

    for _ in range(200):  # the default of 60 calls a minute would stop this
        call()


def test_a_stream_is_settled_from_its_last_chunk(backend: Backend) -> None:
    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 60)
    def stream() -> Any:
        yield {"choices": [{"delta": {"content": "a"}}]}
        yield {"choices": [], "usage": {"total_tokens": 5}}

    assert len(list(stream())) == 2
    assert len(list(stream())) == 2  # 5 counted, not 60


def test_a_token_budgeted_generator_passes_send_and_throw_through(backend: Backend) -> None:
    seen: list[object] = []

    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 10)
    def stream() -> Any:
        try:
            seen.append((yield {"choices": []}))
        except KeyError as error:
            seen.append(error)
            yield {"usage": {"total_tokens": 3}}
        return "done"

    chunks = stream()
    next(chunks)
    assert chunks.throw(KeyError("stop")) == {"usage": {"total_tokens": 3}}  # the generator saw it
    with pytest.raises(StopIteration) as ended:
        next(chunks)
    assert ended.value.value == "done" and isinstance(seen[0], KeyError)
    chunks = stream()
    next(chunks)
    with pytest.raises(StopIteration):
        chunks.send("hello")
    assert seen[-1] == "hello"


def test_options_are_checked_when_decorating() -> None:
    with pytest.raises(ConfigurationError, match="tokens"):
        rate_limited(tokens=0)
    with pytest.raises(ConfigurationError, match="estimate"):
        rate_limited(tokens=10, estimate=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="token_estimate"), token_estimate(0):
        pass
    rate_limited(tokens=10, period=60)  # period with tokens and no calls is fine


def test_the_default_estimate_reads_the_prompt_and_max_tokens() -> None:
    parts = [{"type": "text", "text": "你好"}]
    messages = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": parts}]
    prompt = 3 + 4 + count_tokens("x" * 40) + 4 + count_tokens("你好")
    assert estimate_call({"messages": messages, "max_tokens": 100}, count_tokens) == prompt + 100
    assert estimate_call({"messages": messages, "max_completion_tokens": 7, "n": 2}, count_tokens) == prompt + 14
    assert estimate_call({"prompt": "abcd"}, len) == 3 + 4 + 1024  # no max_tokens: the default allowance
    assert by_characters("你好") == 2  # without tiktoken, never below one token per Chinese character
    assert by_characters("x" * 41) == 11
    assert count_tokens("你好") >= 1  # tiktoken's count where it is installed with its data (litellm brings both)


def test_usage_is_read_from_every_provider_shape() -> None:
    assert tokens_used({"usage": {"total_tokens": 12}}) == 12
    assert tokens_used(SimpleNamespace(usage=SimpleNamespace(prompt_tokens=3, completion_tokens=4))) == 7
    anthropic = {"usage": {"input_tokens": 5, "output_tokens": 6, "cache_creation_input_tokens": 2}}
    assert tokens_used(anthropic) == 13
    assert tokens_used({"choices": []}) is None
    assert tokens_used("text") is None


@pytest.mark.redis
def test_a_hundred_calls_across_eight_processes_keep_the_token_budget_redis(redis_url: str) -> None:
    """The guarantee on the callers' own clock: 100 concurrent calls in 8 processes, each using what it reserved."""
    from .test_redis import result, worker

    budget, period, seconds = 2000, 1.0, 3.0
    processes = [
        worker(
            "tokens",
            url=redis_url,
            key="mp-tokens",
            tokens=budget,
            period=period,
            tasks=13 if i < 4 else 12,
            seconds=seconds,
            largest=120,
        )
        for i in range(8)
    ]
    spent = [(start, size) for p in processes for start, size in result(p, timeout=60)["spent"]]
    assert most_tokens_in_window(spent, period) <= budget
    # Steady state (after the first window, while every process runs): most of the budget is used.
    first = min(start for start, _ in spent)
    steady = sum(size for start, size in spent if first + 1.0 <= start < first + 3.0)
    assert steady >= 0.8 * budget * 2


def test_usage_equal_to_the_estimate_settles_without_an_error(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing to give back is still a settle the store accepts (Lua once sent Redis a "-0")."""

    @rate_limited(tokens=100, period=30, concurrency=2, backend=backend, max_wait=0, estimate=lambda: 40)
    def call() -> dict[str, Any]:
        return answer(40)

    with caplog.at_level("ERROR", logger="glm_guard"):
        call()
        call()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    with pytest.raises(RateLimitTimeout):
        call()  # 80 counted: 40 more would pass the budget


def test_a_rate_limited_call_gives_its_reservation_back(backend: Backend) -> None:
    from .helpers import SEED_1302

    failing = iter([True, False])

    @rate_limited(tokens=100, period=30, backend=backend, max_wait=0, cooldown=0, estimate=lambda: 70)
    def call() -> dict[str, Any]:
        if next(failing):
            raise RuntimeError(SEED_1302)
        return answer(70)

    with pytest.raises(RuntimeError):
        call()
    call()  # the refused call's 70 came back


@pytest.mark.redis
def test_one_script_call_admits_and_one_settles_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens, calls, concurrency and cooldown in one admission step; lease and tokens in one settle."""
    from glm_guard.backends._redis import RedisBackend

    backend = RedisBackend(redis_url)
    ran: list[str] = []
    run = backend.connections.run

    def counted(name: str, keys: Any, args: Any) -> Any:
        if name != "heartbeat":
            ran.append(name)
        return run(name, keys, args)

    monkeypatch.setattr(backend.connections, "run", counted)

    @rate_limited(10, 60, concurrency=2, tokens=1000, backend=backend, estimate=lambda: 50)
    def call() -> dict[str, Any]:
        return answer(20)

    try:
        call()
        call()
        assert ran == ["acquire", "settle", "acquire", "settle"]
    finally:
        backend.close()


def test_a_learned_concurrency_limit_and_a_token_budget_work_together(backend: Backend) -> None:
    @rate_limited(concurrency="auto", tokens=100, period=30, backend=backend, max_wait=0, estimate=lambda: 60)
    def call() -> dict[str, Any]:
        return answer(10)

    for _ in range(5):  # each settles to 10: 50 in all, never the 300 its estimates add up to
        call()
    with pytest.raises(RateLimitTimeout), token_estimate(60):
        call()
