"""Load: 16 processes x 32 tasks against the GLM simulator, sharing one limit through Redis.

A longer soak of the same workload: ``python benchmarks/soak.py --minutes 10``.
"""

from __future__ import annotations

import redis

from glm_guard.testing import run_simulator

from .test_redis import result, worker

PROCESSES, TASKS, CALLS, LIMIT = 16, 32, 2, 4


def test_sixteen_processes_get_zero_1302_through_redis(redis_url: str) -> None:
    with run_simulator(concurrency=LIMIT, latency=0.01) as simulator:
        processes = [
            worker("soak", url=redis_url, base_url=simulator.base_url, concurrency=LIMIT, tasks=TASKS, calls=CALLS)
            for _ in range(PROCESSES)
        ]
        reports = [result(process, timeout=120) for process in processes]
        stats = simulator.stats
    outcomes: dict[str, int] = {}
    for report in reports:
        for kind, count in report["outcomes"].items():
            outcomes[kind] = outcomes.get(kind, 0) + count
    assert sum(outcomes.values()) == PROCESSES * TASKS * CALLS  # no call lost
    assert outcomes == {"ok": PROCESSES * TASKS * CALLS}
    assert stats.rejected.get("1302", 0) == 0
    assert stats.peak_in_flight <= LIMIT
    for report in reports:
        before, after = report["rss_kb"]
        assert after - before < 30_000  # KiB: flat, no per-call growth
    client = redis.Redis.from_url(redis_url)
    assert len(client.keys("*")) <= 5  # starts/leases/cooldown of one key, the heartbeat set
    client.close()
