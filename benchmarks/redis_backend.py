"""Redis backend cost, on one connection, in one run: ``python benchmarks/redis_backend.py``.

Starts its own redis-server on a free loopback port, measures (interleaved, medians over
repeats) the PING round trip, one uncontended ``rate_limited`` admission, one admission
with a concurrency lease (acquire + release), one cache hit, and the admitted calls per
second of 8 processes sharing one limit.  Writes ``docs/benchmarks/redis.json`` and
``docs/benchmarks/redis.md``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RedisServer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks"


def per_call_us(fn: Any, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - began) / n * 1e6


def sequential(url: str, repeats: int, n: int) -> dict[str, Any]:
    import redis

    import glm_guard
    from glm_guard.backends._redis import RedisBackend

    backend = RedisBackend(url)
    client = backend.sync_client()  # the same pool the decorators use

    @glm_guard.rate_limited(10**6, 0.05, key="bench-rate", backend=backend)
    def admitted() -> None: ...

    @glm_guard.rate_limited(10**6, 0.05, concurrency=10**6, key="bench-lease", backend=backend)
    def leased() -> None: ...

    @glm_guard.cached_response(ttl=600, key="bench-cache", backend=backend)
    def cached(question: str) -> str:
        return question

    cached("warm")
    cases = {
        "ping": client.ping,
        "rate_limited admission (rate + cooldown, 1 round trip)": admitted,
        "rate_limited with concurrency lease (acquire + release)": leased,
        "cached_response hit": lambda: cached("warm"),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        per_call_us(fn, 200)  # warm up: scripts loaded, connections open
    for _ in range(repeats):
        for name, fn in cases.items():  # interleaved, so drift hits every case alike
            samples[name].append(per_call_us(fn, n))
    backend.close()
    del redis
    return {
        name: {
            "median_us": round(statistics.median(values), 1),
            "min_us": round(min(values), 1),
            "max_us": round(max(values), 1),
            # Each repeat's case against the PING of the same repeat, then the median: drift in a
            # shared VM moves both sides of a pair together, so the ratio is steadier than times.
            "x_ping": round(statistics.median(v / p for v, p in zip(values, samples["ping"], strict=True)), 2),
        }
        for name, values in samples.items()
    }


def _worker(url: str, limit: int, seconds: float, tasks: int, queue: Any) -> None:
    import glm_guard

    @glm_guard.rate_limited(limit, 1.0, key="bench-shared", backend=url)
    async def call() -> None:
        return None

    async def run() -> int:
        stop = time.monotonic() + seconds
        count = 0

        async def task() -> None:
            nonlocal count
            while time.monotonic() < stop:
                await call()
                count += 1

        await asyncio.gather(*(task() for _ in range(tasks)))
        return count

    queue.put(asyncio.run(run()))


def shared_limit(url: str, processes: int, limit: int, seconds: float) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    client.config_resetstat()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_worker, args=(url, limit, seconds, 8, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    counts = [queue.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(30)
    stats = client.info("commandstats")
    commands = sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script")
    )
    client.close()
    admitted = sum(counts)
    # The first second admits a full burst; after that the window allows `limit` per second.
    allowed = limit * (seconds + 1)
    return {
        "processes": processes,
        "tasks_per_process": 8,
        "limit_per_second": limit,
        "seconds": seconds,
        "admitted": admitted,
        "admitted_per_second": round(admitted / seconds, 1),
        "utilisation_of_allowed": round(admitted / allowed, 3),
        "script_calls_per_admitted_call": round(commands / max(admitted, 1), 2),
    }


def main() -> None:
    with RedisServer() as server:
        results = {
            "command": "python benchmarks/redis_backend.py",
            "machine": (
                f"{platform.platform()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}"
            ),
            "sequential_one_connection": sequential(server.url, repeats=21, n=1000),
            "shared_limit": shared_limit(server.url, processes=8, limit=200, seconds=5.0),
        }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "redis.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Redis backend benchmark",
        "",
        f"Command: `{results['command']}` (starts its own redis-server on loopback).",
        f"Machine: {results['machine']}.",
        "",
        "## One connection, sequential (21 interleaved repeats x 1000 calls; × PING: median of per-repeat ratios)",
        "",
        "| operation | median µs | min | max | × PING |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results["sequential_one_connection"].items():
        lines.append(f"| {name} | {row['median_us']} | {row['min_us']} | {row['max_us']} | {row['x_ping']} |")
    shared = results["shared_limit"]
    lines += [
        "",
        "## 8 processes × 8 tasks sharing one limit",
        "",
        "| limit/s | seconds | admitted | admitted/s | utilisation | script calls per admitted call |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {shared['limit_per_second']} | {shared['seconds']} | {shared['admitted']} | "
        f"{shared['admitted_per_second']} | {shared['utilisation_of_allowed']} | "
        f"{shared['script_calls_per_admitted_call']} |",
        "",
        "Utilisation is admitted / allowed, where allowed is one burst of the limit plus the limit",
        "per second after it.  Script calls count every round trip the limiters made, waiting heads",
        "included; each is one atomic EVALSHA.",
        "",
    ]
    (OUT / "redis.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
