"""The fault matrix: 4 processes x 8 callers per outage policy on one real Redis, and a fault mid-run.

Each run guards ``@rate_limited(20, 1, concurrency=4)`` under the three ``on_backend_error``
policies at once (one key each), injects one fault at FAULT_AT seconds and repairs it at
REPAIR_AT, and checks, from the callers' own clocks, what docs/failure_modes.md promises:

- ``local``: no 1 s window over the limit, never more calls in flight than the limit;
- ``closed``: failures only while Redis is unreachable;
- ``open``: the shared limit again within one health backoff of the repair;
- every policy: no wait for Redis longer than one socket timeout, and the full budget is
  used again by the end (no permit stuck).

Faults that lose Redis's data (FLUSHALL, eviction) are checked against what that costs,
as the page documents: a limit restored within one period and one lease.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from glm_guard.backends._redis._health import LONGEST_BACKOFF_SECONDS

from .conftest import REDIS_PASSWORD, RedisServer, start_redis
from .helpers import max_in_window

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
PROCESSES, TASKS = 4, 8
CALLS, PERIOD, CONCURRENCY, HOLD = 20, 1.0, 4, 0.05
SOCKET_TIMEOUT = 0.5
LEASE = 3.0  # renewed every second: a lease lost with Redis's data is put back within one
FAULT_AT, REPAIR_AT, RUN = 2.0, 5.0, 11.0


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans running at one moment (an end before a start at the same moment)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


class Run:
    """The merged record of one fault run; times are seconds after the run began."""

    def __init__(self, begin: float, results: list[dict[str, Any]]) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self.errors: dict[str, list[tuple[float, str]]] = {}
        for policy in ("local", "closed", "open"):
            self.spans[policy] = sorted((s - begin, e - begin) for r in results for s, e in r["spans"][policy])
            self.errors[policy] = sorted((t - begin, name) for r in results for t, name in r["errors"][policy])
        self.probes = sorted((t - begin, seconds) for r in results for t, seconds in r["probes"])

    def starts(self, policy: str, after: float = 0.0, before: float = RUN) -> list[float]:
        return [s for s, _ in self.spans[policy] if after <= s < before]

    def in_flight(self, policy: str, after: float = 0.0) -> int:
        return peak_overlap([(s, e) for s, e in self.spans[policy] if s >= after])

    def summary(self) -> str:
        parts = []
        for policy in self.spans:
            starts = self.starts(policy)
            parts.append(
                f"{policy}: {len(starts)} calls, max/1s {max_in_window(starts, PERIOD)}, "
                f"in flight {self.in_flight(policy)}, errors {len(self.errors[policy])}"
            )
        parts.append(f"slowest probe {max((s for _, s in self.probes), default=0):.2f}s")
        return "; ".join(parts)


def run_with_fault(url: str, inject: Callable[[], None], repair: Callable[[], None]) -> Run:
    begin = time.monotonic() + 1.5  # every worker imported and waiting
    options = {
        "url": url,
        "key": "matrix",
        "processes": PROCESSES,
        "tasks": TASKS,
        "calls": CALLS,
        "period": PERIOD,
        "concurrency": CONCURRENCY,
        "hold": HOLD,
        "socket_timeout": SOCKET_TIMEOUT,
        "lease": LEASE,
        "begin": begin,
        "end": begin + RUN,
    }
    command = [sys.executable, "-m", "tests.fault_worker", json.dumps(options)]
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(PROCESSES)]
    try:
        time.sleep(max(begin + FAULT_AT - time.monotonic(), 0.0))
        inject()
        time.sleep(max(begin + REPAIR_AT - time.monotonic(), 0.0))
        repair()
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=RUN + 30)
            assert worker.returncode == 0, out
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate()  # reaped, its pipe closed: nothing left for a later test to find
    return Run(begin, results)


def record(fault: str, run: Run, outage: tuple[float, float] | None) -> None:
    """With FAULT_TABLE_FILE set, append this run's figures there (``python -m tests.fault_table``)."""
    path = os.environ.get("FAULT_TABLE_FILE")
    if not path:
        return
    rows = {}
    for policy in ("local", "closed", "open"):
        failed = [t for t, _ in run.errors[policy]]
        rows[policy] = {
            "calls": len(run.starts(policy)),
            "max_per_window": max_in_window(run.starts(policy), PERIOD),
            "max_in_flight": run.in_flight(policy),
            "failures": len(failed),
            "failed_from": min(failed, default=None),
            "failed_until": max(failed, default=None),
            "last_2s": len(run.starts(policy, after=RUN - 2.0)),
        }
    line = {"fault": fault, "outage": outage, "slowest_redis_wait": max(s for _, s in run.probes), "policies": rows}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def assert_every_policy_recovers(run: Run) -> None:
    slowest = max(seconds for _, seconds in run.probes)
    assert slowest < SOCKET_TIMEOUT + 0.5, run.summary()  # one socket timeout, with scheduling slack
    for policy in ("local", "closed", "open"):
        tail = run.starts(policy, after=RUN - 2.0)
        assert len(tail) >= 0.6 * CALLS * 2, (policy, run.summary())  # the budget is in use: nothing stuck


def assert_local_holds(
    run: Run, *, data_lost_at: float | None = None, refusing: tuple[float, float] | None = None
) -> None:
    """``local``: the limit in every window and in flight; after lost data, from one period and lease on.

    Between the two moments of ``refusing``, Redis refuses some writes and accepts others (a
    full Redis): the calls it refused are served from their processes' shares, which Redis
    cannot count, so the bound there is the one docs/failure_modes.md gives, the limit plus
    every share (twice the limit); the limit holds again from one period after the episode.
    """
    after = 0.0 if data_lost_at is None else data_lost_at + PERIOD + LEASE / 3 + 0.2
    spans = [(s, e) for s, e in run.spans["local"] if s >= after]
    if refusing is not None:
        assert max_in_window([s for s, _ in spans], PERIOD) <= 2 * CALLS, run.summary()
        assert peak_overlap(spans) <= 2 * CONCURRENCY, run.summary()
        spans = [(s, e) for s, e in spans if not refusing[0] <= s < refusing[1] + PERIOD]
    assert max_in_window([s for s, _ in spans], PERIOD) <= CALLS, run.summary()
    assert peak_overlap(spans) <= CONCURRENCY, run.summary()
    assert not run.errors["local"], run.errors["local"][:5]


def assert_closed_fails_only_in_the_outage(run: Run, outage: tuple[float, float] | None) -> None:
    failures = [t for t, _ in run.errors["closed"]]
    if outage is None:
        assert not failures, run.errors["closed"][:5]
        return
    # From the fault until one backoff after the repair (a process may still be backing off).
    assert all(outage[0] - 0.1 <= t <= outage[1] + LONGEST_BACKOFF_SECONDS + SOCKET_TIMEOUT for t in failures), (
        run.errors["closed"][:5]
    )
    settled = outage[1] + LONGEST_BACKOFF_SECONDS + SOCKET_TIMEOUT
    assert max_in_window(run.starts("closed", after=settled), PERIOD) <= CALLS, run.summary()


def assert_open_shares_again(run: Run, repaired_at: float) -> None:
    settled = repaired_at + LONGEST_BACKOFF_SECONDS + SOCKET_TIMEOUT + PERIOD
    assert max_in_window(run.starts("open", after=settled), PERIOD) <= CALLS, run.summary()
    assert run.in_flight("open", after=settled) <= CONCURRENCY, run.summary()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_redis() as running:
        yield running


def command(server: RedisServer, *args: Any) -> Callable[[], None]:
    def send() -> None:
        client = server.client(socket_timeout=5)
        try:
            client.execute_command(*args)
        finally:
            client.close()

    return send


def test_redis_paused_for_three_seconds(server: RedisServer) -> None:
    run = run_with_fault(server.url, server.pause, server.resume)
    record("paused (SIGSTOP) 3 s", run, (FAULT_AT, REPAIR_AT))
    assert_every_policy_recovers(run)
    assert_local_holds(run)
    assert_closed_fails_only_in_the_outage(run, (FAULT_AT, REPAIR_AT))
    assert_open_shares_again(run, REPAIR_AT)


@pytest.mark.parametrize("password", [REDIS_PASSWORD, None], ids=["password", "no-password"])
def test_redis_killed_and_restarted_empty(password: str | None) -> None:
    try:
        server = RedisServer(password=password).start()
    except FileNotFoundError:
        pytest.fail("redis-server is not installed")
    with server:
        run = run_with_fault(server.url, server.kill, server.start)
    fault = f"killed (SIGKILL), restarted empty 3 s later, {'with' if password else 'no'} password"
    record(fault, run, (FAULT_AT, REPAIR_AT))
    assert_every_policy_recovers(run)
    assert_local_holds(run)  # the grace time and the adopted calls cover the restart
    assert_closed_fails_only_in_the_outage(run, (FAULT_AT, REPAIR_AT))
    assert_open_shares_again(run, REPAIR_AT)


def test_redis_every_client_connection_killed(server: RedisServer) -> None:
    run = run_with_fault(server.url, command(server, "CLIENT", "KILL", "TYPE", "normal"), lambda: None)
    record("CLIENT KILL of every connection", run, None)
    assert_every_policy_recovers(run)
    assert_local_holds(run)
    assert_closed_fails_only_in_the_outage(run, (FAULT_AT, FAULT_AT + SOCKET_TIMEOUT))
    assert_open_shares_again(run, FAULT_AT)


def test_redis_scripts_flushed(server: RedisServer) -> None:
    run = run_with_fault(server.url, command(server, "SCRIPT", "FLUSH"), lambda: None)
    record("SCRIPT FLUSH", run, None)
    assert_every_policy_recovers(run)
    assert_local_holds(run)
    assert_closed_fails_only_in_the_outage(run, None)  # redis-py loads a flushed script again
    assert_open_shares_again(run, 0.0)


def test_redis_all_data_flushed(server: RedisServer) -> None:
    run = run_with_fault(server.url, command(server, "FLUSHALL"), lambda: None)
    record("FLUSHALL (all state lost)", run, None)
    assert_every_policy_recovers(run)
    assert_local_holds(run, data_lost_at=FAULT_AT)
    assert_closed_fails_only_in_the_outage(run, None)
    for policy in ("closed", "open"):
        starts = run.starts(policy, after=FAULT_AT + PERIOD + LEASE / 3 + 0.2)
        assert max_in_window(starts, PERIOD) <= CALLS, run.summary()


def test_redis_out_of_memory_episode(server: RedisServer) -> None:
    """With ``noeviction`` (the setting the docs ask for) a full Redis refuses writes."""
    client = server.client(socket_timeout=5)

    def fill() -> None:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(used + 256 * 1024))
        try:
            for i in range(10_000):
                client.set(f"ballast:{i}", b"x" * 4096)
        except redis.ResponseError:
            pass  # OOM: full

    def empty() -> None:
        client.config_set("maxmemory", "0")
        for key in client.scan_iter("ballast:*", count=1000):
            client.delete(key)

    run = run_with_fault(server.url, fill, empty)
    client.close()
    record("out of memory 3 s (maxmemory, noeviction)", run, (FAULT_AT, REPAIR_AT))
    assert_every_policy_recovers(run)
    assert_local_holds(run, refusing=(FAULT_AT, REPAIR_AT))
    assert_closed_fails_only_in_the_outage(run, (FAULT_AT, REPAIR_AT))
    assert_open_shares_again(run, REPAIR_AT)


def test_redis_eviction_episode(server: RedisServer) -> None:
    """With an evicting ``maxmemory-policy`` (the docs ask for ``noeviction``) glm_guard's keys go too:
    the same cost as lost data, for as long as the episode lasts."""
    client = server.client(socket_timeout=5)

    def fill() -> None:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("maxmemory", str(used + 256 * 1024))
        for i in range(2_000):  # each write evicts the least recently used keys: glm_guard's among them
            client.set(f"ballast:{i}", b"x" * 4096)

    def empty() -> None:
        client.config_set("maxmemory", "0")
        for key in client.scan_iter("ballast:*", count=1000):
            client.delete(key)

    run = run_with_fault(server.url, fill, empty)
    client.close()
    record("eviction 3 s (maxmemory, allkeys-lru)", run, None)
    assert_every_policy_recovers(run)
    assert_local_holds(run, data_lost_at=REPAIR_AT)
    # Keys are evicted rather than writes refused, but Redis still answers OOM to a write it
    # cannot make room for (client buffers count too), so `closed` may fail a call in the episode.
    assert_closed_fails_only_in_the_outage(run, (FAULT_AT, REPAIR_AT))


def test_redis_down_at_start() -> None:
    try:
        server = RedisServer(password=REDIS_PASSWORD)
    except FileNotFoundError:
        pytest.fail("redis-server is not installed")
    try:  # not started: the workers begin with no server on the port
        run = run_with_fault(server.url, lambda: None, server.start)
    finally:
        server.stop()
    record("down at start, up after 5 s", run, (0.0, REPAIR_AT))
    assert run.errors["closed"], "closed never failed: Redis was up from the start"
    assert_every_policy_recovers(run)
    assert_local_holds(run)  # each process took a quarter: expected_processes=4
    assert_closed_fails_only_in_the_outage(run, (0.0, REPAIR_AT))
    assert_open_shares_again(run, REPAIR_AT)
