"""Property tests: the limiter algorithms against a brute-force oracle, on a virtual clock.

The same random vectors drive the local ``WindowState`` and the Redis ``acquire.lua`` script
(with its clock injected), so both are checked against one definition of the guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glm_guard.backends import LimitPolicy
from glm_guard.backends._window import WindowState


@dataclass
class Oracle:
    """The guarantee, stated as plainly as possible and checked by brute force."""

    calls: int | None
    period: float
    concurrency: int | None
    starts: list[float] = field(default_factory=list)
    in_flight: int = 0

    def admits(self, now: float) -> bool:
        if self.concurrency is not None and self.in_flight >= self.concurrency:
            return False
        if self.calls is not None:
            recent = [s for s in self.starts if now - self.period < s <= now]
            if len(recent) >= self.calls:
                return False
        return True


# Times are whole milliseconds, as on the Redis clock, so no float rounding sits between the
# oracle and the code.  An operation: (ms since the previous one, "acquire" or "release").
operations = st.lists(
    st.tuples(st.sampled_from([0, 1, 10, 50, 100, 300, 1000]), st.sampled_from(["acquire", "release"])),
    min_size=1,
    max_size=40,
)
policies = st.tuples(
    st.one_of(st.none(), st.integers(1, 6)),
    st.sampled_from([100, 500, 1000]),
    st.one_of(st.none(), st.integers(1, 4)),
).filter(lambda p: p[0] is not None or p[2] is not None)


def run_vector(policy_tuple: tuple[int | None, float, int | None], ops: list[tuple[float, str]], decide) -> None:  # type: ignore[no-untyped-def]
    calls, period, concurrency = policy_tuple
    oracle = Oracle(calls, period, concurrency)
    now = 1_000_000
    held = 0
    for gap, op in ops:
        now += gap
        if op == "release":
            if held:
                held -= 1
                oracle.in_flight -= 1
                decide("release", now)
            continue
        expected = oracle.admits(now)
        assert decide("acquire", now) is expected, (policy_tuple, ops, now)
        if expected:
            held += 1
            oracle.in_flight += 1
            oracle.starts.append(now)
        # The guarantee itself, over everything admitted so far:
        if calls is not None:
            for start in oracle.starts:
                assert sum(1 for s in oracle.starts if start <= s < start + period) <= calls
        if concurrency is not None:
            assert oracle.in_flight <= concurrency
    # Every permit handed out can be returned: in-flight drops back to zero.
    for _ in range(held):
        decide("release", now)


@settings(max_examples=300, deadline=None)
@given(policy_tuple=policies, ops=operations)
def test_local_window_matches_the_oracle(policy_tuple: tuple[int | None, float, int | None], ops: list) -> None:  # type: ignore[type-arg]
    state = WindowState()
    policy = LimitPolicy(*policy_tuple)

    def decide(op: str, now: float) -> bool:
        if op == "release":
            state.release()
            return True
        if state.next_admission(policy, now) <= now:
            state.admit(policy, now)
            return True
        return False

    run_vector(policy_tuple, ops, decide)
    assert state.in_flight == 0


@pytest.fixture
def redis_scripts(redis_url: str):  # type: ignore[no-untyped-def]
    from glm_guard.backends import RedisBackend

    backend = RedisBackend(redis_url)
    yield backend
    backend.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy_tuple=policies, ops=operations)
def test_lua_script_matches_the_oracle_redis(redis_scripts, policy_tuple, ops) -> None:  # type: ignore[no-untyped-def]
    backend = redis_scripts
    calls, period, concurrency = policy_tuple
    key = f"prop-{id(ops)}-{len(ops)}"
    suffixes = ("starts", "leases", "cooldown", "learned", "paused")  # acquire.lua's keys, in order
    keys = [backend.key(key, suffix) for suffix in suffixes]
    limits = f"{calls or 0} {period} {concurrency or 0} 600000 0"
    held: list[str] = []
    counter = iter(range(10**6))

    def decide(op: str, now: float) -> bool:
        if op == "release":
            backend.connections.run("release", [keys[1]], [held.pop(0), "chan"])
            return True
        token = f"t{next(counter)}"
        reply = backend.connections.run("acquire", keys, [limits, token, now])
        if int(reply[0]) == 1:
            if concurrency is not None:
                held.append(token)
            else:
                held.append("")
            return True
        return False

    run_vector(policy_tuple, ops, decide)
    backend.connections.client().delete(*keys)
