"""The learned concurrency limit (``concurrency="auto"``): the rule, its Lua twin, every process obeying it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from typing import Any

import pytest
import redis

import glm_guard
from glm_guard import AutoConcurrency, ConfigurationError, retry_on_1302
from glm_guard.backends import Backend
from glm_guard.backends._learned import LONGEST_PROBE_GAP, RECOVERY_PROBES, Admission, LearnedLimit
from glm_guard.backends._redis import RedisBackend

from .helpers import SEED_1302, ErrorWithText
from .test_redis import result, worker

# -- the rule, driven by events alone (it reads no clock) ---------------------------------------


class Provider:
    """A provider that refuses calls beyond ``capacity`` in flight, with callers always waiting."""

    def __init__(self, rule: LearnedLimit, capacity: int) -> None:
        self.rule = rule
        self.capacity = capacity
        self.running: list[int] = []  # the epoch each running call was admitted in
        self.limited_at: list[int] = []  # attempt numbers that drew a 1302
        self.attempts = 0
        self.in_flight_sum = 0
        self.rounds = 0

    def step(self) -> None:
        """Fill the free slots (a backlog waits), then the oldest call answers."""
        while len(self.running) < self.rule.limit:
            epoch = self.rule.admitted(len(self.running) + 1)
            self.attempts += 1
            if len(self.running) >= self.capacity:
                self.limited_at.append(self.attempts)
                self.rule.limited(epoch, len(self.running))
            else:
                self.running.append(epoch)
        self.rule.refused()  # callers are waiting at the limit
        self.in_flight_sum += len(self.running)
        self.rounds += 1
        self.attempts += 1
        self.rule.succeeded(self.running.pop(0))

    def run(self, attempts: int) -> None:
        stop = self.attempts + attempts
        while self.attempts < stop:
            self.step()


def test_slow_start_finds_the_capacity_with_one_cut() -> None:
    provider = Provider(LearnedLimit.starting(1, 64, 1), capacity=12)
    provider.run(200)
    assert provider.rule.epoch >= 1
    assert provider.limited_at[0] < 60  # doubling per round, not one slot per round
    assert 10 <= provider.rule.limit <= 12


@pytest.mark.parametrize("capacity", [2, 4, 10, 20])
def test_a_steady_capacity_costs_at_most_20_per_1000_calls_and_is_used(capacity: int) -> None:
    provider = Provider(LearnedLimit.starting(1, 64, capacity), capacity=capacity)
    provider.run(200)  # settled
    before, provider.in_flight_sum, provider.rounds = len(provider.limited_at), 0, 0
    provider.run(5_000)
    limited = len(provider.limited_at) - before
    assert limited <= 20 * 5, limited
    assert provider.in_flight_sum / provider.rounds >= 0.85 * capacity


def test_failed_probes_are_spaced_further_apart() -> None:
    provider = Provider(LearnedLimit.starting(1, 64, 4), capacity=4)
    provider.run(6_000)
    gaps = [later - earlier for earlier, later in zip(provider.limited_at, provider.limited_at[1:], strict=False)]
    assert len(gaps) >= 5
    assert gaps[:5] == sorted(gaps[:5])  # growing while they keep failing
    assert max(gaps) <= 2 * LONGEST_PROBE_GAP + 20  # but never beyond the cap: no permanent ceiling


def test_a_drop_is_followed_within_a_few_epochs_and_a_recovery_is_found_again() -> None:
    provider = Provider(LearnedLimit.starting(1, 64, 8), capacity=8)
    provider.run(300)
    provider.capacity = 2
    failures_before = len(provider.limited_at)
    limits, stop = [], provider.attempts + 30
    while provider.attempts < stop:
        provider.step()  # one call answers per step
        limits.append(provider.rule.limit)
    settled = next(step for step, limit in enumerate(limits) if limit <= 2)
    assert settled < 10, limits  # a few epochs
    # The cut holds for two limits' worth of answers (two call latencies) before it probes above.
    assert all(limit <= 2 for limit in limits[settled : settled + 2 * 2]), limits
    assert len(provider.limited_at) - failures_before <= 8  # at most the calls in flight at the drop
    provider.run(2_000)  # a long low phase: probes are far apart by now
    provider.capacity = 8
    start = provider.attempts
    while provider.rule.limit < 7 and provider.attempts - start < 10 * LONGEST_PROBE_GAP:
        provider.step()
    assert provider.rule.limit >= 7


def test_one_cut_per_epoch_whatever_the_number_of_1302s() -> None:
    rule = LearnedLimit.starting(1, 64, 64)
    epochs = [rule.admitted(n) for n in range(1, 65)]
    for running, epoch in enumerate(epochs):
        rule.limited(epoch, 63 - running)
    assert rule.epoch == 1
    assert rule.limit == 57  # floor(64 * 0.9): one cut, however many failed together


def test_successes_teach_nothing_while_the_limit_is_not_in_use() -> None:
    rule = LearnedLimit.starting(1, 64, 4)
    rule.limited(rule.admitted(4), 3)  # past slow start
    for _ in range(100):
        rule.succeeded(rule.admitted(1))  # one call at a time: never at the limit
    assert rule.limit == 3  # cut once, and never grown since


# -- the Lua twin: learn.lua gives the same answers for the same events ---------------------------


@pytest.mark.redis
def test_learn_script_and_rule_agree_on_random_events(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        leases, learned = backend.key("twin", "leases"), backend.key("twin", "learned")
        rule = LearnedLimit.starting(2, 40, 6)
        rng = random.Random(13)
        for _ in range(1_500):
            event = rng.random()
            epoch = rule.epoch if rng.random() < 0.8 else max(0, rule.epoch - 1)
            if event < 0.3:
                rule.refused()
                client.hset(learned, "busy", 1)
                continue
            others = rng.randrange(0, 45)
            admission = Admission(epoch, running=rng.randrange(1, 46))
            client.delete(leases)
            if others:
                client.zadd(leases, {f"other{n}": 4e12 for n in range(others)})
            outcome = "2" if event < 0.45 else "1"
            if outcome == "2":
                rule.limited(epoch, admission.others(others))
            else:
                rule.succeeded(epoch)
            lesson = ["gone", "ch", outcome, epoch, "2 40 6", admission.running]
            reply = backend.connections.run("learn", [leases, learned], lesson)
            assert int(reply[1]) == rule.limit
            stored = {k.decode(): int(v) for k, v in client.hgetall(learned).items()}
            expected = {
                "limit": rule.limit,
                "epoch": rule.epoch,
                "busy": int(rule.busy),
                "streak": rule.streak,
                "ceiling": rule.ceiling,
                "misses": rule.misses,
                "peak": rule.peak,
            }
            assert {k: stored.get(k, expected[k]) for k in expected} == expected
    finally:
        client.close()
        backend.close()


@pytest.mark.redis
def test_planted_learned_state_never_lifts_the_bounds(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(backend.key("planted", "learned"), mapping={"limit": "1e9", "epoch": "x", "busy": "7"})
        bounds = AutoConcurrency(min=1, max=3)
        running = 0
        peak = 0
        lock = threading.Lock()

        @glm_guard.rate_limited(concurrency=bounds, key="planted", backend=backend)
        def call() -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            with lock:
                running -= 1

        threads = [threading.Thread(target=call) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert 1 <= peak <= 3
    finally:
        client.close()
        backend.close()


# -- through the decorator, on both backends --------------------------------------------------


async def _hammer(call: Any, callers: int, calls: int) -> None:
    async def caller() -> None:
        for _ in range(calls):
            with contextlib.suppress(ErrorWithText):
                await call()

    await asyncio.gather(*(caller() for _ in range(callers)))


async def test_the_decorator_learns_a_capacity_and_holds_it(backend: Backend) -> None:
    capacity = 3
    running = 0
    peak_after_settling = 0
    refused = 0
    answered = 0

    @glm_guard.rate_limited(concurrency="auto", key="learns", backend=backend)
    async def call() -> None:
        nonlocal running, refused, answered, peak_after_settling
        if running >= capacity:
            refused += 1
            raise ErrorWithText(SEED_1302)
        running += 1
        try:
            await asyncio.sleep(0.01)
        finally:
            running -= 1
        answered += 1
        if answered > 60:
            peak_after_settling = max(peak_after_settling, running + 1)

    await _hammer(call, callers=10, calls=40)
    limiter = backend.limiter("learns")
    assert limiter.learned_limit() in (2, 3)
    assert answered + refused == 400
    assert refused <= 40  # slow start's overshoot plus a probe now and then
    assert peak_after_settling <= capacity


def test_auto_is_validated_at_decoration_time() -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        glm_guard.rate_limited(concurrency="automatic")
    with pytest.raises(ConfigurationError, match="max"):
        AutoConcurrency(min=4, max=2)
    with pytest.raises(ConfigurationError, match="initial"):
        AutoConcurrency(min=1, max=4, initial=9)


def test_environment_auto_with_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM_API_MAX_CONCURRENCY", "auto")
    monkeypatch.setenv("GLM_GUARD_AUTO_CONCURRENCY_MAX", "8")
    assert glm_guard.reload_settings().max_concurrency == AutoConcurrency(min=1, max=8)
    monkeypatch.setenv("GLM_GUARD_AUTO_CONCURRENCY_MIN", "9")
    with pytest.raises(ConfigurationError, match="GLM_GUARD_AUTO_CONCURRENCY_MAX"):
        glm_guard.reload_settings()


def test_a_1302_under_a_learned_limit_cuts_instead_of_pausing_the_key(backend: Backend) -> None:
    calls = 0

    @glm_guard.rate_limited(concurrency=AutoConcurrency(initial=4), key="nopause", backend=backend, cooldown=30)
    def call(fail: bool) -> None:
        nonlocal calls
        calls += 1
        if fail:
            raise ErrorWithText(SEED_1302)

    with pytest.raises(ErrorWithText):
        call(True)
    assert backend.limiter("nopause").learned_limit() == 1  # cut to what was running: nothing
    started = time.monotonic()
    call(False)  # no 30 s cooldown: the cut is the answer
    assert time.monotonic() - started < 10


# -- many processes, one cut ------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_eight_processes_all_limited_at_once_make_exactly_one_cut(redis_url: str) -> None:
    processes, tasks = 8, 8
    key = "one-cut"
    workers = [
        worker("learn_cut", url=redis_url, key=key, tasks=tasks, barrier="barrier", everyone=processes * tasks)
        for _ in range(processes)
    ]
    limited = sum(result(process, timeout=60)["limited"] for process in workers)
    assert limited == processes * tasks
    client = redis.Redis.from_url(redis_url)
    try:
        backend = RedisBackend(redis_url)
        state = {k.decode(): int(v) for k, v in client.hgetall(backend.key(key, "learned")).items()}
        backend.close()
    finally:
        client.close()
    assert state["epoch"] == 1  # 64 1302s in the same moment: one congestion, one cut
    # Cut once, to at most floor(64 * 0.9), and to no more than ran beside the first call refused.
    assert 1 <= state["limit"] <= 57


# -- against the simulator, while its capacity changes -------------------------------------------


@pytest.mark.slow
async def test_the_learned_limit_follows_the_simulators_capacity(backend: Backend) -> None:
    """Capacity 4 -> 2 -> 4, 3 s each, 12 backlogged callers: counted in ranges, not timed."""
    import httpx

    from glm_guard.testing import run_simulator

    phases = [(4, 3.0), (2, 3.0), (4, 3.0)]
    key = "glm:follows"
    samples: list[tuple[int, int | None]] = []  # (phase, learned limit)
    failures: list[BaseException] = []
    with run_simulator(concurrency=4, latency=0.05) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url, headers={"Authorization": "Bearer sk-follow"}) as http:

            @retry_on_1302(max_tries=8, base_delay=0.05, max_delay=0.2)
            @glm_guard.rate_limited(concurrency="auto", key=key, backend=backend)
            async def ask() -> None:
                reply = await http.post(
                    "/chat/completions", json={"model": "glm-4", "messages": [{"role": "user", "content": "hi"}]}
                )
                if reply.status_code == 429:
                    raise ErrorWithText(f"429 {reply.text}")
                reply.raise_for_status()

            async def caller(until: float) -> None:
                while time.monotonic() < until:
                    try:
                        await ask()
                    except Exception as error:  # counted: none may reach a caller
                        failures.append(error)

            async def follow(until: float) -> None:
                phase_end = time.monotonic()
                for phase, (capacity, seconds) in enumerate(phases):
                    sim.update(concurrency=capacity)
                    phase_end += seconds
                    while time.monotonic() < phase_end:
                        if phase_end - time.monotonic() < 1.0:  # the last second of each phase: settled
                            samples.append((phase, backend.limiter(key).learned_limit()))
                        await asyncio.sleep(0.05)

            until = time.monotonic() + sum(seconds for _, seconds in phases)
            await asyncio.gather(follow(until), *(caller(until) for _ in range(12)))
        stats = sim.stats
    assert failures == []
    for phase, (capacity, _) in enumerate(phases):
        settled = [limit for p, limit in samples if p == phase and limit is not None]
        assert settled, phase
        near = sum(1 for limit in settled if capacity - 1 <= limit <= capacity + 1)
        assert near >= 0.8 * len(settled), (phase, settled)
    answered = stats.total_requests - stats.rejected.get("1302", 0)
    assert stats.rejected.get("1302", 0) <= 0.15 * answered  # a short run: slow start, drops, probes


def test_a_failed_probe_above_the_peak_goes_back_one_slot() -> None:
    provider = Provider(LearnedLimit.starting(1, 64, 20), capacity=20)
    provider.run(3_000)
    probes_at = len(provider.limited_at)
    provider.run(3_000)
    assert len(provider.limited_at) > probes_at  # it kept probing 21
    assert provider.rule.peak == 20
    assert provider.rule.limit in (20, 21)  # never down to 18 as a x0.9 cut would leave it


def test_once_a_probe_finds_the_capacity_back_the_limit_climbs_to_its_old_peak_fast() -> None:
    provider = Provider(LearnedLimit.starting(1, 64, 16), capacity=16)
    provider.run(500)
    provider.capacity = 4
    provider.run(400)
    assert provider.rule.limit <= 5
    provider.capacity = 16
    while provider.rule.ceiling:  # until a probe holds
        provider.step()
    start = provider.attempts
    while provider.rule.limit < 15:
        provider.step()
    assert provider.attempts - start <= 3 * 16  # one slot per success: a few call latencies, not twelve


def test_a_climb_that_overshoots_forgets_the_old_peak() -> None:
    provider = Provider(LearnedLimit.starting(1, 64, 16), capacity=16)
    provider.run(500)
    provider.capacity = 4
    provider.run(400)
    provider.capacity = 6  # back, but not all the way
    provider.run(2_000)
    assert provider.rule.peak <= 7
    assert 5 <= provider.rule.limit <= 7


@pytest.mark.parametrize("low_latencies", [60, 200, 1_000])
def test_a_capacity_back_after_a_peak_hour_is_found_within_a_few_dozen_latencies(low_latencies: int) -> None:
    """Below the peak the capacity fell from, the first probes are close together (peak hours
    end): the limit is back at 4 within 30 call latencies of the capacity's return, however long
    the low phase was, and the low phase costs a handful of 1302s."""
    provider = Provider(LearnedLimit.starting(1, 64, 4), capacity=4)
    provider.run(800)
    provider.capacity = 2
    before = len(provider.limited_at)
    provider.run(2 * low_latencies)  # two calls per latency at capacity 2
    assert len(provider.limited_at) - before <= 8 + RECOVERY_PROBES
    provider.capacity = 4
    steps = 0
    while provider.rule.limit < 4:
        provider.step()
        steps += 1
    assert steps / 4 <= 30  # four calls per latency at capacity 4
