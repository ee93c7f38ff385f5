"""The shared retry budget: its rule, its keying, one budget for every process, and its failures."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

import glm_guard
from glm_guard import (
    ConfigurationError,
    GLMRateLimitException,
    RetryBudgetExhausted,
    RetryBudgetPolicy,
    RetryEvent,
    rate_limited,
    retry_on_1302,
)
from glm_guard.backends import get_backend
from glm_guard.backends._base import Backend
from glm_guard.backends._local import LocalBackend
from glm_guard.backends._redis import RedisBackend
from glm_guard.testing import RedisServer, run_simulator

from .helpers import SEED_1302, ErrorWithText

ROOT = Path(__file__).resolve().parent.parent
FLOOR = RetryBudgetPolicy().min_retries


def budget_key(key: str) -> str:
    """Where the Redis backend keeps a key's budget (docs/retry_on_1302.md)."""
    return f"glm_guard:{{{key}}}:retry_budget"


def always_1302(backend: Backend, key: str, **retry: Any) -> tuple[list[int], Any]:
    """A function the provider always refuses, guarded by the recommended stack; and its attempts."""
    attempts: list[int] = []

    @retry_on_1302(5, base_delay=0.0, max_delay=0.0, jitter=False, **retry)
    @rate_limited(100_000, 1.0, key=key, backend=backend, cooldown=0)
    def call() -> None:
        attempts.append(1)
        raise ErrorWithText(SEED_1302)

    return attempts, call


def run_calls(call: Any, calls: int) -> list[GLMRateLimitException]:
    errors = []
    for _ in range(calls):
        with pytest.raises(GLMRateLimitException) as caught:
            call()
        errors.append(caught.value)
    return errors


# -- the policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ratio": -0.1}, "retry_budget.ratio"),
        ({"ratio": float("nan")}, "retry_budget.ratio"),
        ({"ratio": "0.2"}, "retry_budget.ratio"),
        ({"min_retries": -1}, "retry_budget.min_retries"),
        ({"min_retries": 2.5}, "retry_budget.min_retries"),
        ({"window": 0.5}, "retry_budget.window"),
        ({"window": 61}, "retry_budget.window"),
    ],
)
def test_a_bad_policy_fails_where_it_is_built(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryBudgetPolicy(**kwargs)
    assert caught.value.name == name


@pytest.mark.parametrize("value", [True, "20%", 0.2, {"ratio": 0.2}])
def test_retry_budget_takes_a_policy_none_or_false(value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        retry_on_1302(retry_budget=value)  # type: ignore[call-overload]
    assert caught.value.name == "retry_budget"


def test_a_bad_environment_backend_fails_at_decoration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM_GUARD_BACKEND", "memcached")
    glm_guard.reload_settings()
    with pytest.raises(ConfigurationError) as caught:
        retry_on_1302(lambda: None)
    assert caught.value.name == "GLM_GUARD_BACKEND"
    retry_on_1302(retry_budget=False)(lambda: None)  # no budget: no backend needed


# -- the rule, on the local backend's clock ---------------------------------------------------


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


@pytest.fixture
def timed_backend(clock: list[float]) -> LocalBackend:
    return LocalBackend(clock=lambda: clock[0])


def withdrawals(budget: Any, most: int = 1000) -> int:
    allowed = 0
    while allowed < most and budget.withdraw():
        allowed += 1
    return allowed


def test_the_floor_lets_a_few_retries_go_without_any_call(timed_backend: LocalBackend) -> None:
    budget = timed_backend.retry_budget("k", RetryBudgetPolicy(ratio=0.2, min_retries=3))
    assert withdrawals(budget) == 3


def test_the_ratio_lets_a_share_of_the_calls_retry(timed_backend: LocalBackend) -> None:
    budget = timed_backend.retry_budget("k", RetryBudgetPolicy(ratio=0.2, min_retries=3))
    for _ in range(50):
        budget.deposit()
    assert withdrawals(budget) == 10  # max(20 % of 50, 3)
    for _ in range(5):
        budget.deposit()
    assert withdrawals(budget) == 1  # 20 % of 55 is 11


def test_calls_and_retries_leave_the_window(timed_backend: LocalBackend, clock: list[float]) -> None:
    budget = timed_backend.retry_budget("k", RetryBudgetPolicy(ratio=0.5, min_retries=1, window=10))
    for _ in range(20):
        budget.deposit()
    assert withdrawals(budget) == 10
    clock[0] += 9.0
    assert withdrawals(budget) == 0  # still inside the 10 s window
    clock[0] += 1.0
    assert withdrawals(budget) == 1  # calls and retries gone: the floor again


def test_policies_of_one_key_count_the_same_calls(timed_backend: LocalBackend) -> None:
    strict = timed_backend.retry_budget("k", RetryBudgetPolicy(ratio=0.1, min_retries=0))
    loose = timed_backend.retry_budget("k", RetryBudgetPolicy(ratio=0.5, min_retries=0))
    for _ in range(20):
        strict.deposit()
    assert withdrawals(strict) == 2
    assert withdrawals(loose) == 8  # 10 in all, 2 of them already made
    assert withdrawals(timed_backend.retry_budget("other", RetryBudgetPolicy(ratio=0.5, min_retries=0))) == 0


# -- the budget around retry_on_1302, on every backend ---------------------------------------


def test_when_every_call_is_refused_attempts_stay_within_the_budget(backend: Backend) -> None:
    events: list[glm_guard.monitoring.GuardEvent] = []
    unsubscribe = glm_guard.subscribe(events.append)
    attempts, call = always_1302(backend, "budget-bound")
    try:
        errors = run_calls(call, 100)
    finally:
        unsubscribe()
    assert 100 + FLOOR <= len(attempts) <= 1.2 * 100 + FLOOR
    spent = [error for error in errors if isinstance(error, RetryBudgetExhausted)]
    assert len(spent) >= 90
    assert all(e.key == "budget-bound" and e.code == "1302" and e.attempts >= 1 for e in spent)
    assert all(isinstance(e.__cause__, ErrorWithText) for e in spent)
    gave_up = [e for e in events if isinstance(e, RetryEvent) and e.exhausted]
    assert len(gave_up) == 100  # every give-up reported alike, the budget's included


def test_without_the_budget_every_call_makes_all_its_attempts(backend: Backend) -> None:
    attempts, call = always_1302(backend, "no-budget", retry_budget=False)
    run_calls(call, 20)
    assert len(attempts) == 100


async def test_async_calls_share_the_budget(backend: Backend) -> None:
    attempts: list[int] = []

    @retry_on_1302(5, base_delay=0.0, max_delay=0.0, jitter=False)
    @rate_limited(100_000, 1.0, key="async-budget", backend=backend, cooldown=0)
    async def call() -> None:
        attempts.append(1)
        await asyncio.sleep(0)
        raise ErrorWithText(SEED_1302)

    outcomes = await asyncio.gather(*(call() for _ in range(50)), return_exceptions=True)
    assert all(isinstance(outcome, GLMRateLimitException) for outcome in outcomes)
    assert len(attempts) <= 1.2 * 50 + FLOOR


def test_a_lone_call_keeps_its_attempts(backend: Backend) -> None:
    attempts, call = always_1302(backend, "lone")
    with pytest.raises(GLMRateLimitException) as caught:
        call()
    assert not isinstance(caught.value, RetryBudgetExhausted)
    assert len(attempts) == 5


def test_the_budget_is_the_rate_limit_keys_in_either_stacking_order(local_backend: LocalBackend) -> None:
    tight = RetryBudgetPolicy(ratio=0.0, min_retries=2)
    first: list[int] = []
    second: list[int] = []

    @retry_on_1302(5, base_delay=0.0, jitter=False, retry_budget=tight)
    @rate_limited(1000, 1.0, key="one-account", backend=local_backend, cooldown=0)
    def ask() -> None:
        first.append(1)
        raise ErrorWithText(SEED_1302)

    @rate_limited(1000, 1.0, key="one-account", backend=local_backend, cooldown=0)
    @retry_on_1302(5, base_delay=0.0, jitter=False, retry_budget=tight)
    def summarise() -> None:
        second.append(1)
        raise ErrorWithText(SEED_1302)

    with pytest.raises(RetryBudgetExhausted):
        ask()
    assert len(first) == 3  # the floor's two retries
    with pytest.raises(RetryBudgetExhausted) as caught:
        summarise()
    assert len(second) == 1 and caught.value.key == "one-account" and caught.value.attempts == 1


def test_without_a_rate_limit_the_function_key_and_the_environment_backend() -> None:
    tight = RetryBudgetPolicy(ratio=0.0, min_retries=1)
    attempts: list[int] = []

    @retry_on_1302(5, base_delay=0.0, jitter=False, retry_budget=tight)
    def call() -> None:
        attempts.append(1)
        raise ErrorWithText(SEED_1302)

    with pytest.raises(RetryBudgetExhausted) as caught:
        call()
    assert len(attempts) == 2
    key = f"{__name__}.test_without_a_rate_limit_the_function_key_and_the_environment_backend.<locals>.call"
    assert caught.value.key == key
    assert not get_backend(None).retry_budget(key, tight).withdraw()  # the one it spent


def test_testing_mode_turns_the_budget_off(local_backend: LocalBackend) -> None:
    attempts, call = always_1302(local_backend, "testing", retry_budget=RetryBudgetPolicy(ratio=0.0, min_retries=0))
    with glm_guard.set_testing(True), pytest.raises(GLMRateLimitException) as caught:
        call()
    assert not isinstance(caught.value, RetryBudgetExhausted)
    assert len(attempts) == 5
    with pytest.raises(RetryBudgetExhausted):
        call()


# -- Redis: one budget for every process, one round trip per retry, nothing trusted ------------


def start_worker(options: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.retry_budget_worker", json.dumps(options)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def worker_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.redis
@pytest.mark.parametrize(
    ("policy", "calls", "most_retries"),
    [
        # The floor alone: one budget gives the two processes 10 retries; one each would give 20.
        ({"ratio": 0.0, "min_retries": 10, "window": 60}, 20, lambda total: 10),
        # The ratio: 20 % of every process's calls, and the floor once.
        ({"ratio": 0.2, "min_retries": 4, "window": 60}, 60, lambda total: 0.2 * total + 4),
    ],
)
def test_two_processes_share_one_budget(redis_url: str, policy: dict[str, Any], calls: int, most_retries: Any) -> None:
    start = time.monotonic() + 2.0  # both have imported glm_guard by then
    options = {"url": redis_url, "key": "two-processes", "calls": calls, "policy": policy, "start": start}
    results = [worker_result(worker) for worker in [start_worker(options), start_worker(options)]]
    total_calls = sum(result["calls"] for result in results)
    retries = sum(result["attempts"] for result in results) - total_calls
    assert retries <= most_retries(total_calls)
    assert retries >= min(most_retries(total_calls), 10) - 1  # the budget was used, not starved
    assert all(result["cut"] > 0 for result in results)


@pytest.mark.redis
def test_only_retries_touch_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM_GUARD_BACKEND", redis_url)
    glm_guard.reload_settings()
    failures = [0]

    @retry_on_1302(5, base_delay=0.0, jitter=False)
    def call() -> str:
        if failures[0]:
            failures[0] -= 1
            raise ErrorWithText(SEED_1302)
        return "ok"

    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    for _ in range(20):
        assert call() == "ok"
    assert "cmdstat_evalsha" not in client.info("commandstats")  # 20 calls, no round trip
    failures[0] = 1
    assert call() == "ok"
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1  # one retry, one round trip
    fields = {k.decode(): int(v) for k, v in client.hgetall(budget_key(f"{__name__}.{call.__qualname__}")).items()}
    assert sum(v for k, v in fields.items() if k.startswith("d")) == 21  # the calls, sent with the retry
    assert sum(v for k, v in fields.items() if k.startswith("r")) == 1
    assert 0 < client.ttl(budget_key(f"{__name__}.{call.__qualname__}")) <= 61
    client.close()


@pytest.fixture
def redis_backend(redis_url: str) -> Iterator[RedisBackend]:
    shared = RedisBackend(redis_url)
    yield shared
    shared.close()


@pytest.mark.redis
def test_bad_data_in_the_hash_neither_crashes_nor_enlarges_the_budget(redis_backend: RedisBackend) -> None:
    policy = RetryBudgetPolicy(ratio=0.2, min_retries=2, window=10)
    client = redis_backend.connections.client()
    now = int(client.time()[0])
    key = budget_key("planted")
    client.hset(
        key,
        mapping={
            "d": "5",
            "dxyz": "5",
            "q123": "7",
            f"d{now}": "abc",
            f"d{now - 1}": "-50",
            f"d{now - 2}": "1e6",
            f"d{now - 3}": "9" * 30,
            f"d{now - 4}": "inf",
            f"d{now + 1000}": "1000000",  # from the future
            f"d{now - 1000}": "1000000",  # long gone
            f"r{now}": "-100",  # negative retries would make room
            "d" + "9" * 40: "3",
        },
    )
    assert withdrawals(redis_backend.retry_budget("planted", policy)) == 2  # the floor, as with a clean hash
    assert {field.decode()[0] for field in client.hkeys(key)} == {"r"}  # only our own retries remain
    client.delete(key)
    client.set(key, "not a hash")
    assert withdrawals(redis_backend.retry_budget("planted", policy)) == 2
    assert client.type(key) == b"hash"


@pytest.mark.redis
def test_while_redis_is_away_this_process_decides_alone(own_redis: RedisServer) -> None:
    shared = RedisBackend(own_redis.url, socket_timeout=0.3)
    budget = shared.retry_budget("outage", RetryBudgetPolicy(ratio=0.0, min_retries=4))
    budget.deposit()
    assert budget.withdraw() and budget.withdraw()  # two through Redis
    own_redis.kill()
    try:
        assert withdrawals(budget) == 2  # the per-process budget knows the two already made
        assert asyncio.run(budget.withdraw_async()) is False
    finally:
        shared.close()


@pytest.mark.redis
def test_a_forked_child_does_not_send_its_parents_calls(redis_backend: RedisBackend) -> None:
    budget = redis_backend.retry_budget("forked", RetryBudgetPolicy(ratio=1.0, min_retries=0))
    for _ in range(5):
        budget.deposit()
    redis_backend.after_fork()  # what the child runs
    assert budget.withdraw() is False  # no calls of its own yet


# -- a real SDK against the simulator ----------------------------------------------------------


@pytest.mark.parametrize("seconds", [2.5, pytest.param(30.0, marks=pytest.mark.slow)])
def test_openai_against_a_simulator_refusing_everything(backend: Backend, seconds: float) -> None:
    """Every request gets 1302 for a while (30 s in the slow run, as issue 13 states it): the
    simulator's own count of requests stays within 1.2 x the logical calls plus the floor
    (5 x without the budget)."""
    with run_simulator(concurrency=100, latency=0.0) as sim:
        sim.set_model_fault("glm-4", "1302")
        calls = [0]
        unexpected: list[object] = []
        lock = threading.Lock()
        with openai.OpenAI(api_key="sk-budget-0000", base_url=sim.base_url, max_retries=0, timeout=5) as client:

            @retry_on_1302(5, base_delay=0.01, max_delay=0.05)
            @rate_limited(100_000, 1.0, key="glm:glm-4", backend=backend, cooldown=0)
            def ask() -> str:
                reply = client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": "hi"}])
                return reply.choices[0].message.content or ""

            def caller(stop: float) -> None:
                while time.monotonic() < stop:
                    with lock:
                        calls[0] += 1
                    try:
                        unexpected.append(ask())
                    except GLMRateLimitException:
                        pass
                    except Exception as error:
                        unexpected.append(error)

            stop = time.monotonic() + seconds
            threads = [threading.Thread(target=caller, args=(stop,)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=seconds + 30)
            requests = sim.stats.total_requests
            sim.set_model_fault("glm-4", None)
            assert ask()  # the budget never blocks a call, only its retries
    assert unexpected == []
    assert calls[0] >= 20
    assert sim.stats.rejected["1302"] == requests
    assert calls[0] < requests <= 1.2 * calls[0] + FLOOR
