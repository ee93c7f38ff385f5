"""How glm_guard's cost grows: with processes, with waiting tasks, with keys and cache entries.

- **Processes 1 → 16**, Redis backend: one task per process admitting as fast as it can
  (a limit that never binds: the admission latency each process sees), and eight tasks per
  process sharing a limit of 100/s (round trips and server commands per admitted call).
- **Waiting tasks 10 → 1,000** in one process sharing 100/s, Redis and local backends:
  round trips per admitted call, the caller's wait, the client CPU per admitted call.
- **Memory**: the local backend with up to 10,000 distinct keys (beside one aiolimiter per
  key), and ``@cached_response`` at ``maxsize`` (beside a cachetools memo), by ``tracemalloc``.

``python benchmarks/bench_scaling.py --out scaling.json`` (starts its own redis-server).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path
from typing import Any

import bench_accuracy as accuracy
import bench_common as common

PRELOAD = accuracy.PRELOAD


def _run(ctx: Any, client: Any, url: str, peer: str, processes: int, tasks: int, limit: int, seconds: float) -> dict:
    client.flushall()
    job = {
        "peer": peer,
        "url": url,
        "limit": limit,
        "period": 1.0,
        "tasks": tasks,
        "seconds": seconds,
        "key": f"bench-scaling-{peer}-{processes}-{tasks}-{limit}",
    }
    reports, commands, begin = accuracy.run_processes(ctx, job, processes, client)
    row = accuracy.summarise(job, reports, commands, begin)
    row.pop("window_counts_every_50ms")
    row.update({"processes": processes, "tasks_per_process": tasks, "limit": limit})
    return row


def processes_sweep(ctx: Any, client: Any, url: str, counts: list[int], seconds: float) -> dict[str, list[dict]]:
    uncontended, contended = [], []
    for n in counts:
        common.log(f"scaling: {n} process(es), uncontended and contended")
        uncontended.append(_run(ctx, client, url, "glm_guard", n, 1, 10**6, seconds))
        contended.append(_run(ctx, client, url, "glm_guard", n, 8, 100, seconds))
    return {"uncontended": uncontended, "contended": contended}


def waiters_sweep(ctx: Any, client: Any, url: str, counts: list[int], seconds: float) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {"glm_guard": [], "glm_guard_local": []}
    for n in counts:
        common.log(f"scaling: {n} waiting tasks in one process, Redis and local")
        for peer in found:
            found[peer].append(_run(ctx, client, url, peer, 1, n, 100, seconds))
    return found


# -- memory ---------------------------------------------------------------------------------


def _measured(build: Any) -> int:
    """Bytes that stay allocated after ``build()`` (which returns what keeps them alive)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return after - before


def memory(key_counts: list[int], cache_sizes: list[int]) -> dict[str, Any]:
    import cachetools
    from aiolimiter import AsyncLimiter
    from cachetools.keys import hashkey

    import glm_guard
    from glm_guard.backends import LimitPolicy
    from glm_guard.backends._local import LocalBackend

    policy = LimitPolicy(50, 60.0, 2)

    def local_keys(n: int, starts: int) -> Any:
        backend = LocalBackend()
        for i in range(n):
            limiter = backend.limiter(f"glm-4:tenant-{i}")
            for _ in range(starts):
                limiter.acquire(policy, None).release()
        return backend

    def aiolimiter_keys(n: int) -> Any:
        async def fill() -> dict[str, Any]:
            found = {}
            for i in range(n):
                limiter = found[f"glm-4:tenant-{i}"] = AsyncLimiter(50, 60)
                await limiter.acquire()
            return found

        return asyncio.run(fill())

    local_keys(10, 1)  # one-time allocations (imports, first limiter) are not a key's cost
    aiolimiter_keys(10)
    keys = []
    for n in key_counts:
        common.log(f"scaling: memory of {n} keys")
        row = {
            "keys": n,
            "glm_guard_local_bytes": _measured(lambda n=n: local_keys(n, 1)),
            "aiolimiter_bytes": _measured(lambda n=n: aiolimiter_keys(n)),
        }
        row["glm_guard_local_bytes_per_key"] = row["glm_guard_local_bytes"] / n
        row["aiolimiter_bytes_per_key"] = row["aiolimiter_bytes"] / n
        keys.append(row)
    full_window_n = key_counts[-1]
    full_window = _measured(lambda: local_keys(full_window_n, 50))

    answer = "思考过程…… 结论:" + "答" * 200  # one shared value: the cache's own cost is measured

    def gg_cache(size: int, calls: int, stats: bool = False) -> Any:
        common.switch_stats(stats)
        try:

            @glm_guard.cached_response(
                ttl=600, maxsize=size, key=f"bench-memory-{size}-{calls}-{stats}", backend="local"
            )
            def ask(question: str) -> str:
                return answer

            for i in range(calls):
                ask(f"问题 {i}")
            return ask
        finally:
            common.switch_stats(True)

    def memo(size: int, calls: int) -> Any:
        cache: cachetools.TTLCache[Any, str] = cachetools.TTLCache(maxsize=size, ttl=600)
        for i in range(calls):
            cache[hashkey(f"问题 {i}")] = answer
        return cache

    gg_cache(8, 8)
    gg_cache(8, 8, True)
    memo(8, 8)
    caches = []
    for size in cache_sizes:
        common.log(f"scaling: cache memory at maxsize={size}")
        caches.append(
            {
                "maxsize": size,
                "glm_guard_bytes_at_maxsize": _measured(lambda size=size: gg_cache(size, size)),
                "glm_guard_bytes_after_2x_maxsize": _measured(lambda size=size: gg_cache(size, 2 * size)),
                "glm_guard_stats_on_bytes_after_2x_maxsize": _measured(
                    lambda size=size: gg_cache(size, 2 * size, True)
                ),
                "cachetools_bytes_at_maxsize": _measured(lambda size=size: memo(size, size)),
            }
        )
        row = caches[-1]
        row["glm_guard_bytes_per_entry"] = row["glm_guard_bytes_at_maxsize"] / size
        row["cachetools_bytes_per_entry"] = row["cachetools_bytes_at_maxsize"] / size
    return {
        "limiter_keys": keys,
        "local_full_windows": {
            "keys": full_window_n,
            "starts_per_key": 50,
            "bytes": full_window,
            "bytes_per_key": full_window / full_window_n,
        },
        "cache": caches,
        "value_note": f"every cached value is one shared {len(answer)}-character string",
        "stats_switch": common.switch_stats(True),
    }


def measure(args: Any) -> dict[str, Any]:
    import redis

    seconds = 1.0 if args.quick else 3.0
    process_counts = [1, 2, 4] if args.quick else [1, 2, 4, 8, 16]
    waiter_counts = [10, 100] if args.quick else [10, 100, 1000]
    key_counts = [1000, 10000] if args.quick else [1000, 2500, 5000, 10000]
    cache_sizes = [256, 1024] if args.quick else [256, 1024, 4096, 16384]
    result: dict[str, Any] = {"seconds_per_run": seconds, "memory": memory(key_counts, cache_sizes)}
    ctx = accuracy.context()
    with common.redis_url(args.redis_url) as url:
        client = redis.Redis.from_url(url)
        result["processes"] = processes_sweep(ctx, client, url, process_counts, seconds)
        result["waiters"] = waiters_sweep(ctx, client, url, waiter_counts, seconds)
        client.close()
    return result


def render(section: dict[str, Any], out: Path) -> str:
    pyplot = common.plt()
    procs = section["processes"]
    waiters = section["waiters"]
    mem = section["memory"]
    lines = [
        "# How the cost grows",
        "",
        f"Each run lasts {section['seconds_per_run']:g} s against one redis-server on loopback. Round trips are "
        "requests written to Redis by every client of every process (counted in redis-py, background threads "
        "included); server commands come from `INFO commandstats` (commands inside Lua scripts included). "
        "All processes share the machine's cores with redis-server, so past the core count latency grows with "
        "CPU contention as much as with Redis.",
        "",
        "## Processes (Redis backend)",
        "",
        "Uncontended: one task per process, a limit that never binds; the latency is one decorated call, "
        "admission included. Contended: 8 tasks per process share 100 calls/s.",
        "",
        common.table(
            [
                "processes",
                "uncontended admission p50 ms",
                "p99 ms",
                "round trips / call",
                "contended: admitted",
                "utilisation",
                "round trips / admitted",
                "after the first second",
                "server commands / admitted",
                "wait p99 s",
            ],
            [
                [
                    u["processes"],
                    common.fmt(u["wait_p50_s"] * 1000, 3),
                    common.fmt(u["wait_p99_s"] * 1000, 3),
                    common.fmt(u["round_trips_per_admitted"], 3),
                    c["admitted"],
                    f"{c['utilisation']:.1%}",
                    common.fmt(c["round_trips_per_admitted"], 2),
                    common.fmt(c["round_trips_per_admitted_steady"], 2),
                    common.fmt(c["server_commands_per_admitted"], 1),
                    common.fmt(c["wait_p99_s"], 2),
                ]
                for u, c in zip(procs["uncontended"], procs["contended"], strict=True)
            ],
        ),
        "",
        "![Cost with processes](scaling_processes.png)",
        "",
        "## Waiting tasks in one process (100 calls/s)",
        "",
        common.table(
            [
                "backend",
                "waiting tasks",
                "admitted",
                "utilisation",
                "round trips / admitted",
                "after the first second",
                "client CPU ms / admitted",
                "wait p50 s",
                "wait p99 s",
            ],
            [
                [
                    "Redis" if peer == "glm_guard" else "local",
                    r["tasks_per_process"],
                    r["admitted"],
                    f"{r['utilisation']:.1%}",
                    common.fmt(r["round_trips_per_admitted"], 2),
                    common.fmt(r["round_trips_per_admitted_steady"], 2),
                    common.fmt(r["client_cpu_ms_per_admitted"], 3),
                    common.fmt(r["wait_p50_s"], 2),
                    common.fmt(r["wait_p99_s"], 2),
                ]
                for peer, rows in waiters.items()
                for r in rows
            ],
            "lrrrrrrrr",
        ),
        "",
        "![Cost with waiting tasks](scaling_waiters.png)",
        "",
        "## Memory",
        "",
        "Measured with `tracemalloc` (Python allocations that stay alive). Limiter keys: one call admitted "
        "per key, policy 50 calls / 60 s, concurrency 2; aiolimiter: one `AsyncLimiter(50, 60)` per key in a "
        f"dict, acquired once. Cache: {mem['value_note']}; glm_guard's stats recording is off for the "
        "cache rows except *stats on* (recording keeps each call's figures until its flush thread folds them).",
        "",
        common.table(
            ["keys", "glm_guard local bytes", "per key", "aiolimiter bytes", "per key"],
            [
                [
                    r["keys"],
                    f"{r['glm_guard_local_bytes']:,}",
                    common.fmt(r["glm_guard_local_bytes_per_key"], 0),
                    f"{r['aiolimiter_bytes']:,}",
                    common.fmt(r["aiolimiter_bytes_per_key"], 0),
                ]
                for r in mem["limiter_keys"]
            ],
        ),
        "",
        f"With every window full ({mem['local_full_windows']['starts_per_key']} starts kept per key), "
        f"{mem['local_full_windows']['keys']:,} keys take {mem['local_full_windows']['bytes']:,} bytes "
        f"({mem['local_full_windows']['bytes_per_key']:.0f} per key).",
        "",
        common.table(
            [
                "maxsize",
                "glm_guard at maxsize",
                "per entry",
                "after 2 × maxsize calls",
                "same, stats on",
                "cachetools memo at maxsize",
                "per entry",
            ],
            [
                [
                    r["maxsize"],
                    f"{r['glm_guard_bytes_at_maxsize']:,}",
                    common.fmt(r["glm_guard_bytes_per_entry"], 0),
                    f"{r['glm_guard_bytes_after_2x_maxsize']:,}",
                    f"{r['glm_guard_stats_on_bytes_after_2x_maxsize']:,}",
                    f"{r['cachetools_bytes_at_maxsize']:,}",
                    common.fmt(r["cachetools_bytes_per_entry"], 0),
                ]
                for r in mem["cache"]
            ],
        ),
        "",
        "![Memory](scaling_memory.png)",
        "",
    ]

    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 3.8))
    xs = [u["processes"] for u in procs["uncontended"]]
    left.plot(xs, [u["wait_p50_s"] * 1000 for u in procs["uncontended"]], "o-", color="#c0392b", label="p50")
    left.plot(xs, [u["wait_p99_s"] * 1000 for u in procs["uncontended"]], "o--", color="#c0392b", label="p99")
    left.set_xscale("log", base=2)
    left.set_xticks(xs, [str(x) for x in xs])
    left.set_xlabel("processes")
    left.set_ylabel("uncontended admission latency, ms")
    left.legend()
    right.plot(
        xs, [c["round_trips_per_admitted"] for c in procs["contended"]], "o-", color="#c0392b", label="round trips"
    )
    right.plot(
        xs,
        [c["round_trips_per_admitted_steady"] for c in procs["contended"]],
        "o:",
        color="#e67e22",
        label="round trips after the first second",
    )
    right.plot(
        xs,
        [c["server_commands_per_admitted"] for c in procs["contended"]],
        "s--",
        color="#7f8c8d",
        label="server commands",
    )
    right.set_xscale("log", base=2)
    right.set_xticks(xs, [str(x) for x in xs])
    right.set_ylim(bottom=0)
    right.set_xlabel("processes (8 tasks each, 100 calls/s shared)")
    right.set_ylabel("per admitted call")
    right.legend()
    fig.suptitle("glm_guard on Redis as processes are added")
    fig.savefig(out / "scaling_processes.png")
    pyplot.close(fig)

    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 3.8))
    for peer, style, name in (("glm_guard", "o-", "Redis"), ("glm_guard_local", "s--", "local")):
        rows = waiters[peer]
        ns = [r["tasks_per_process"] for r in rows]
        if peer == "glm_guard":
            left.plot(ns, [r["round_trips_per_admitted"] for r in rows], style, color="#c0392b", label="whole run")
            left.plot(
                ns,
                [r["round_trips_per_admitted_steady"] for r in rows],
                "o:",
                color="#e67e22",
                label="after the first second",
            )
            left.legend()
        right.plot(ns, [r["client_cpu_ms_per_admitted"] for r in rows], style, label=f"{name}: client CPU")
    left.set_xscale("log")
    left.set_ylim(bottom=0)
    left.set_xlabel("waiting tasks in one process")
    left.set_ylabel("Redis round trips per admitted call")
    right.set_xscale("log")
    right.set_xlabel("waiting tasks in one process")
    right.set_ylabel("client CPU ms per admitted call")
    right.legend()
    fig.suptitle("glm_guard with many waiting tasks (100 calls/s)")
    fig.savefig(out / "scaling_waiters.png")
    pyplot.close(fig)

    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 3.8))
    ks = [r["keys"] for r in mem["limiter_keys"]]
    left.plot(
        ks,
        [r["glm_guard_local_bytes"] / 1e6 for r in mem["limiter_keys"]],
        "o-",
        color="#c0392b",
        label="glm_guard local",
    )
    left.plot(
        ks, [r["aiolimiter_bytes"] / 1e6 for r in mem["limiter_keys"]], "s--", color="#7f8c8d", label="aiolimiter"
    )
    left.set_xlabel("distinct keys")
    left.set_ylabel("MB")
    left.legend()
    sizes = [r["maxsize"] for r in mem["cache"]]
    right.plot(
        sizes, [r["glm_guard_bytes_at_maxsize"] / 1e6 for r in mem["cache"]], "o-", color="#c0392b", label="glm_guard"
    )
    right.plot(
        sizes,
        [r["glm_guard_bytes_after_2x_maxsize"] / 1e6 for r in mem["cache"]],
        "^:",
        color="#c0392b",
        label="glm_guard after 2 × maxsize calls",
    )
    right.plot(
        sizes,
        [r["cachetools_bytes_at_maxsize"] / 1e6 for r in mem["cache"]],
        "s--",
        color="#7f8c8d",
        label="cachetools",
    )
    right.set_xscale("log", base=2)
    right.set_xlabel("maxsize (entries)")
    right.set_ylabel("MB")
    right.legend()
    fig.suptitle("Memory: local limiter keys (left), cache at maxsize (right)")
    fig.savefig(out / "scaling_memory.png")
    pyplot.close(fig)
    return "\n".join(lines)


if __name__ == "__main__":
    common.part_main("scaling", measure)
