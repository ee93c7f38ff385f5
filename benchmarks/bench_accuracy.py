"""Accuracy across processes: 8 processes x 8 tasks sharing one limit, glm_guard beside its peers.

Every task loops: ask for admission, record the moment it starts (a no-op call), ask again.
The peers that only answer yes/no (``limits``, ``pyrate-limiter`` without blocking) are
polled every 10 ms, the loop their documentation suggests; ``pyrate-limiter`` is also run with
its own blocking acquire; ``aiolimiter`` gets one limiter per process, the common mistake.

From the recorded starts (one clock: ``time.monotonic`` is system-wide on Linux):

- **overshoot**: the most starts in any window of one period, divided by the limit.  *Steady
  state* counts windows that end at least one period after the start, so a bucket's initial
  burst is left out; *any window* includes it;
- **utilisation**: starts in the run divided by what the limit allows in it;
- **Redis round trips** per admitted call, counted on the client (every request redis-py writes
  to a socket, background threads included), and **server commands** per admitted call from
  ``INFO commandstats`` (commands run inside Lua scripts included);
- **wait**: from asking to starting, p50 and p99.

``python benchmarks/bench_accuracy.py --out accuracy.json`` (starts its own redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common as common

POLL_SECONDS = 0.01
#: Starts are recorded by the callers, a few ms after the limiter's decision on a loaded machine;
#: windows shortened by this much keep that jitter from reading as overshoot (both are reported).
TOLERANCE_SECONDS = 0.01
PEERS = {
    "glm_guard": "glm_guard @rate_limited, Redis backend",
    "limits_fixed": "limits fixed window, polled every 10 ms",
    "limits_moving": "limits moving window, polled every 10 ms",
    "pyrate_poll": "pyrate-limiter Redis bucket, polled every 10 ms",
    "pyrate_blocking": "pyrate-limiter Redis bucket, blocking acquire",
    "aiolimiter": "aiolimiter, one per process",
}
POLLING = {"limits_fixed", "limits_moving", "pyrate_poll"}
PRELOAD = [
    "__main__",
    "asyncio",
    "redis",
    "redis.asyncio",
    "glm_guard",
    "glm_guard.backends._redis",
    "limits",
    "limits.aio.strategies",
    "pyrate_limiter",
    "aiolimiter",
]

Once = Callable[[Callable[[], None]], Any]


async def make_peer(peer: str, url: str, limit: int, period: float, key: str) -> tuple[Once, Callable[[], Any]]:
    """``(once, close)``: ``await once(record)`` waits for admission, then calls ``record()``."""

    async def nothing() -> None:
        return None

    if peer in ("glm_guard", "glm_guard_local"):
        import glm_guard

        @glm_guard.rate_limited(limit, period, key=key, backend=url if peer == "glm_guard" else "local")
        async def guarded(record: Callable[[], None]) -> None:
            record()

        return guarded, nothing

    if peer in ("limits_fixed", "limits_moving"):
        from limits import RateLimitItemPerSecond
        from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
        from limits.storage import storage_from_string

        assert period == 1.0, "limits expresses this limit per second"
        storage = storage_from_string("async+" + url, implementation="redispy")
        strategy = (FixedWindowRateLimiter if peer == "limits_fixed" else MovingWindowRateLimiter)(storage)
        item = RateLimitItemPerSecond(limit)

        async def polled(record: Callable[[], None]) -> None:
            while not await strategy.hit(item, key):  # noqa: ASYNC110 - polling is the peer's documented use
                await asyncio.sleep(POLL_SECONDS)
            record()

        return polled, nothing

    if peer in ("pyrate_poll", "pyrate_blocking"):
        import redis.asyncio
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

        client = redis.asyncio.Redis.from_url(url)
        bucket = await RedisBucket.init([Rate(limit, int(period * Duration.SECOND))], client, key)
        limiter = Limiter(bucket)

        if peer == "pyrate_poll":

            async def pyrate_polled(record: Callable[[], None]) -> None:
                while not await limiter.try_acquire_async(key, blocking=False):  # noqa: ASYNC110
                    await asyncio.sleep(POLL_SECONDS)
                record()

            once: Once = pyrate_polled
        else:

            async def pyrate_blocking(record: Callable[[], None]) -> None:
                if not await limiter.try_acquire_async(key, blocking=True):
                    raise RuntimeError("pyrate-limiter refused a call it can never admit")
                record()

            once = pyrate_blocking

        async def close() -> None:
            with contextlib.suppress(Exception):
                limiter.close()
            await client.aclose()

        return once, close

    if peer == "aiolimiter":
        from aiolimiter import AsyncLimiter

        bucket_limiter = AsyncLimiter(limit, period)

        async def leaky(record: Callable[[], None]) -> None:
            async with bucket_limiter:
                record()

        return leaky, nothing

    raise ValueError(peer)


def worker(job: dict[str, Any], ready: Any, go: Any, start_at: Any, results: Any) -> None:
    """One process: ``job["tasks"]`` tasks asking for admission until the run ends."""
    common.install_round_trip_counter()

    async def main() -> dict[str, Any]:
        once, close = await make_peer(job["peer"], job["url"], job["limit"], job["period"], job["key"])
        ready.put(os.getpid())
        while not go.is_set():  # noqa: ASYNC110 - a multiprocessing.Event has no async wait
            await asyncio.sleep(0.002)
        begin = start_at.value
        end = begin + job["seconds"]
        starts: list[float] = []
        waits: list[float] = []

        async def task() -> None:
            while time.monotonic() < end:
                want = time.monotonic()

                def record(want: float = want) -> None:
                    now = time.monotonic()
                    starts.append(now)
                    waits.append(now - want)

                await once(record)
                await asyncio.sleep(0)

        await asyncio.sleep(max(begin - time.monotonic(), 0.0))
        trips_before = common.round_trips()
        cpu_before = time.process_time()
        tasks = [asyncio.ensure_future(task()) for _ in range(job["tasks"])]
        await asyncio.sleep(max(begin + job["period"] - time.monotonic(), 0.0))
        trips_steady = common.round_trips()
        await asyncio.sleep(max(end - time.monotonic(), 0.0))
        trips = common.round_trips() - trips_before
        trips_steady = common.round_trips() - trips_steady
        cpu = time.process_time() - cpu_before
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close()
        return {
            "starts": starts,
            "waits": waits,
            "round_trips": trips,
            "round_trips_steady": trips_steady,
            "cpu_seconds": cpu,
        }

    results.put(asyncio.run(main()))


def context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_processes(
    ctx: Any, job: dict[str, Any], processes: int, client: Any
) -> tuple[list[dict[str, Any]], tuple[int, int], float]:
    """Start ``processes`` workers, start them together, return their reports and server commands."""
    ready, results = ctx.Queue(), ctx.Queue()
    go, start_at = ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=worker, args=(job, ready, go, start_at, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    begin = time.monotonic() + 0.2
    start_at.value = begin
    go.set()
    time.sleep(max(begin - time.monotonic(), 0.0))
    before = common.server_commands(client)
    time.sleep(max(begin + job["period"] - time.monotonic(), 0.0))
    steady = common.server_commands(client)
    time.sleep(max(begin + job["seconds"] - time.monotonic(), 0.0))
    after = common.server_commands(client)
    reports = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    return reports, (after - before, after - steady), begin


def summarise(
    job: dict[str, Any], reports: list[dict[str, Any]], commands: tuple[int, int], begin: float
) -> dict[str, Any]:
    """The figures of one run; *steady* figures leave out the first period (connections, scripts)."""
    end = begin + job["seconds"]
    period, limit = job["period"], job["limit"]
    all_commands, steady_commands = commands
    starts, waits = [], []
    for report in reports:
        for s, w in zip(report["starts"], report["waits"], strict=True):
            if begin <= s < end:
                starts.append(s)
                waits.append(w)
    admitted = len(starts)
    allowed = limit * math.ceil(job["seconds"] / period - 1e-9)
    steady_admitted = sum(1 for s in starts if s >= begin + period)
    trips = sum(r["round_trips"] for r in reports)
    steady_trips = sum(r["round_trips_steady"] for r in reports)
    cpu = sum(r["cpu_seconds"] for r in reports)
    timeline = []
    ordered = sorted(starts)
    left = right = 0
    t = begin + 0.05
    while t <= end:
        while right < len(ordered) and ordered[right] <= t:
            right += 1
        while left < right and ordered[left] <= t - period:
            left += 1
        timeline.append(right - left)
        t += 0.05
    return {
        "admitted": admitted,
        "allowed": allowed,
        "utilisation": admitted / allowed,
        "overshoot_steady": common.max_in_window(starts, period, ends_from=begin + period) / limit,
        "overshoot_steady_tolerant": common.max_in_window(starts, period - TOLERANCE_SECONDS, ends_from=begin + period)
        / limit,
        "overshoot_any_window": common.max_in_window(starts, period) / limit,
        "round_trips": trips,
        "round_trips_per_admitted": trips / max(admitted, 1),
        "round_trips_per_second": trips / job["seconds"],
        "round_trips_per_admitted_steady": steady_trips / max(steady_admitted, 1),
        "server_commands": all_commands,
        "server_commands_per_admitted": all_commands / max(admitted, 1),
        "server_commands_per_admitted_steady": steady_commands / max(steady_admitted, 1),
        "server_commands_per_second": all_commands / job["seconds"],
        "client_cpu_ms_per_admitted": cpu * 1000 / max(admitted, 1),
        "wait_p50_s": common.percentile(waits, 50),
        "wait_p99_s": common.percentile(waits, 99),
        "window_counts_every_50ms": timeline,
    }


def measure(args: Any) -> dict[str, Any]:
    import redis

    seconds = 2.0 if args.quick else args.seconds
    repeats = 1 if args.quick else args.repeats
    processes, tasks, limit, period = args.processes, args.tasks, args.limit, 1.0
    ctx = context()
    runs: dict[str, list[dict[str, Any]]] = {peer: [] for peer in PEERS}
    with common.redis_url(args.redis_url) as url:
        client = redis.Redis.from_url(url)
        for repeat in range(repeats):
            order = list(PEERS)
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for peer in order:
                client.flushall()
                job = {
                    "peer": peer,
                    "url": url,
                    "limit": limit,
                    "period": period,
                    "tasks": tasks,
                    "seconds": seconds,
                    "key": f"bench-accuracy-{peer}-{repeat}",
                }
                common.log(
                    f"accuracy: {peer}, {processes} processes x {tasks} tasks, {seconds:g} s (repeat {repeat + 1})"
                )
                reports, commands, begin = run_processes(ctx, job, processes, client)
                runs[peer].append(summarise(job, reports, commands, begin))
        client.close()
    metrics = [
        "admitted",
        "utilisation",
        "overshoot_steady",
        "overshoot_steady_tolerant",
        "overshoot_any_window",
        "round_trips_per_admitted",
        "round_trips_per_admitted_steady",
        "round_trips_per_second",
        "server_commands_per_admitted",
        "server_commands_per_admitted_steady",
        "server_commands_per_second",
        "wait_p50_s",
        "wait_p99_s",
    ]
    peers = {}
    for peer, done in runs.items():
        row: dict[str, Any] = {"label": PEERS[peer], "polls": peer in POLLING}
        for metric in metrics:
            row[metric] = common.spread([r[metric] for r in done])
        row["timeline"] = done[0]["window_counts_every_50ms"]
        row["runs"] = [{k: v for k, v in r.items() if k != "window_counts_every_50ms"} for r in done]
        peers[peer] = row
    gg = peers["glm_guard"]
    pollers = [peers[p] for p in POLLING]
    fewest_trips = min(p["round_trips_per_admitted"]["median"] for p in pollers)
    fewest_commands = min(p["server_commands_per_admitted"]["median"] for p in pollers)
    return {
        "processes": processes,
        "tasks_per_process": tasks,
        "limit": limit,
        "period": period,
        "seconds": seconds,
        "repeats": repeats,
        "poll_seconds": POLL_SECONDS,
        "tolerance_seconds": TOLERANCE_SECONDS,
        "peers": peers,
        "targets": [
            {
                "target": f"overshoot exactly 1.00 in steady state (windows {TOLERANCE_SECONDS * 1000:g} ms short)",
                "shown": f"{gg['overshoot_steady_tolerant']['max']:.2f} × limit (worst repeat)",
                "measured": gg["overshoot_steady_tolerant"]["max"],
                "limit": 1.0,
                "unit": "× limit (worst repeat)",
                "met": gg["overshoot_steady_tolerant"]["max"] <= 1.0,
            },
            {
                "target": "overshoot exactly 1.00 in steady state (exact windows, as recorded by the callers)",
                "shown": f"{gg['overshoot_steady']['max']:.2f} × limit (worst repeat)",
                "measured": gg["overshoot_steady"]["max"],
                "limit": 1.0,
                "unit": "× limit (worst repeat)",
                "met": gg["overshoot_steady"]["max"] <= 1.0,
            },
            {
                "target": "utilisation ≥ 95 %",
                "shown": f"{gg['utilisation']['min']:.1%} of allowed (worst repeat)",
                "measured": gg["utilisation"]["min"],
                "limit": 0.95,
                "unit": "of allowed (worst repeat)",
                "met": gg["utilisation"]["min"] >= 0.95,
            },
            {
                "target": "fewer Redis round trips per admitted call than any polling peer",
                "shown": f"{gg['round_trips_per_admitted']['median']:.2f} (after the first second "
                f"{gg['round_trips_per_admitted_steady']['median']:.2f}); fewest of a polling peer {fewest_trips:.1f}",
                "measured": gg["round_trips_per_admitted"]["median"],
                "limit": fewest_trips,
                "unit": "round trips (limit: the fewest of the polling peers)",
                "met": gg["round_trips_per_admitted"]["median"] < fewest_trips,
            },
            {
                "target": "fewer server commands per admitted call than any polling peer",
                "shown": f"{gg['server_commands_per_admitted']['median']:.1f}; "
                f"fewest of a polling peer {fewest_commands:.1f}",
                "measured": gg["server_commands_per_admitted"]["median"],
                "limit": fewest_commands,
                "unit": "commands (limit: the fewest of the polling peers)",
                "met": gg["server_commands_per_admitted"]["median"] < fewest_commands,
            },
        ],
    }


def render(section: dict[str, Any], out: Path) -> str:
    pyplot = common.plt()
    peers = section["peers"]
    n = section["processes"] * section["tasks_per_process"]
    lines = [
        "# Accuracy across processes",
        "",
        f"{section['processes']} processes × {section['tasks_per_process']} tasks ({n} callers) share one limit of "
        f"{section['limit']} calls per {section['period']:g} s for {section['seconds']:g} s; every peer runs "
        f"{section['repeats']} time(s), interleaved with the others, against the same redis-server (flushed "
        "between runs). A task asks for admission, records its start, and asks again at once. The polling peers "
        f"retry every {section['poll_seconds'] * 1000:g} ms; aiolimiter gets one limiter per process.",
        "",
        "- **overshoot (steady)**: the most starts in any window of one period that ends at least one period "
        "after the run began, ÷ the limit; **any window** includes the first period (a bucket's initial burst). "
        "Starts are recorded by the callers, a little after the limiter decided: a caller woken 2 ms late and "
        "the next one on time can look like two starts in one window when the limiter kept them a period "
        f"apart. The **tolerant** column counts windows {section['tolerance_seconds'] * 1000:g} ms shorter than "
        "the period, which absorbs that jitter and nothing a limiter does wrong by more than that;",
        "- **utilisation**: starts during the run ÷ what the limit allows in it (limit × seconds ÷ period);",
        "- **round trips**: requests written to Redis by all clients of all processes (counted in redis-py), "
        "background threads included; **server commands**: `INFO commandstats` over the run, commands inside "
        "Lua scripts included. Both cover the whole run, connection setup and script loading included; "
        "*after the first second* counts only from then on;",
        "- **wait**: from asking to starting.",
        "",
        "Cells give the median over repeats; with more than one repeat the range follows in brackets.",
        "",
        "## Targets (glm_guard)",
        "",
        common.targets_table(section["targets"]),
        "",
        "## All peers",
        "",
    ]

    def cell(row: dict[str, Any], metric: str, digits: int = 2, scale: float = 1.0) -> str:
        s = row[metric]
        text = f"{s['median'] * scale:.{digits}f}"
        if section["repeats"] > 1:
            text += f" [{s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f}]"
        return text

    lines.append(
        common.table(
            [
                "peer",
                "admitted",
                "overshoot (steady)",
                "overshoot (steady, tolerant)",
                "overshoot (any window)",
                "utilisation",
                "round trips / admitted",
                "after the first second",
                "round trips / s",
                "server commands / admitted",
                "wait p50 ms",
                "wait p99 ms",
            ],
            [
                [
                    ("**" + r["label"] + "**") if key == "glm_guard" else r["label"],
                    cell(r, "admitted", 0),
                    cell(r, "overshoot_steady"),
                    cell(r, "overshoot_steady_tolerant"),
                    cell(r, "overshoot_any_window"),
                    cell(r, "utilisation"),
                    cell(r, "round_trips_per_admitted"),
                    cell(r, "round_trips_per_admitted_steady"),
                    cell(r, "round_trips_per_second", 0),
                    cell(r, "server_commands_per_admitted"),
                    cell(r, "wait_p50_s", 0, 1000),
                    cell(r, "wait_p99_s", 0, 1000),
                ]
                for key, r in peers.items()
            ],
            "lrrrrrrrrrrr",
        )
    )
    lines += ["", "![Starts per sliding window](accuracy.png)", ""]

    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
    for key, r in peers.items():
        xs = [0.05 * (i + 1) for i in range(len(r["timeline"]))]
        ys = [c / section["limit"] for c in r["timeline"]]
        left.plot(xs, ys, label=r["label"], linewidth=2.2 if key == "glm_guard" else 1.0)
    left.axhline(1.0, color="black", linestyle=":", linewidth=1)
    left.set_yscale("log")
    left.set_xlabel("seconds into the run")
    left.set_ylabel(f"starts in the last {section['period']:g} s ÷ limit (log)")
    left.set_title("Starts in the trailing window (first repeat)")
    left.legend(fontsize=7)
    keys = list(peers)
    trips = [peers[k]["round_trips_per_admitted"]["median"] for k in keys]
    colours = ["#c0392b" if k == "glm_guard" else "#7f8c8d" for k in keys]
    right.barh(range(len(keys)), trips, color=colours)
    right.set_yticks(range(len(keys)), [peers[k]["label"] for k in keys], fontsize=7)
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel("Redis round trips per admitted call (log)")
    right.set_title("Cost per admitted call")
    fig.savefig(out / "accuracy.png")
    pyplot.close(fig)
    return "\n".join(lines)


def _extra(parser: Any) -> None:
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--limit", type=int, default=50)


if __name__ == "__main__":
    common.part_main("accuracy", measure, _extra)
