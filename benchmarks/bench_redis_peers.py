"""One Redis connection, one caller, one operation after another: what one admission costs.

The floor of any atomic admission is a bare one-key Lua script sent by EVALSHA through
redis-py's normal command path (``register_script``); PING (one round trip that does
nothing) is beside it.  Then: one glm_guard admission (rate, concurrency and cooldown
checked in one script), glm_guard's decorated calls, one cache hit, and the peers doing one
admission: ``limits`` (moving and fixed window), ``pyrate-limiter`` (Redis bucket) and a
bare GCRA Lua script.  Rounds interleave the cases;
each operation is timed on its own (``perf_counter`` around it), and round trips are counted
on the client (every request redis-py writes to its socket from the thread that times the
operation; requests that background threads send meanwhile, such as glm_guard's heartbeat
every 2 s, are counted apart, as ``background_requests``).

``python benchmarks/bench_redis_peers.py --out redis_peers.json`` (starts its own redis-server).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_common as common

BIG = 10**6  # never binds: every admission is admitted at once
#: The target: one glm_guard admission costs at most this many times the floor script.
FLOOR_LIMIT = 1.2

FLOOR = "return redis.call('GET', KEYS[1])"  # one key, no work: the least an atomic admission costs

GCRA = """
-- GCRA (as in redis-gcra / throttled): KEYS[1] theoretical arrival time in ms.
-- ARGV[1] emission interval ms, ARGV[2] burst.  Server clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
return {1, 0}
"""


@dataclass
class Case:
    key: str
    label: str
    who: str
    run: Callable[[], Any]  # one operation, timed on its own; may return an awaitable
    is_async: bool = False
    after: Callable[[Any], Any] | None = None  # untimed follow-up with the operation's result


async def build(url: str) -> list[Case]:
    import redis
    import redis.asyncio
    from limits import RateLimitItemPerSecond
    from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
    from limits.storage import RedisStorage, storage_from_string
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    import glm_guard
    from glm_guard.backends import LimitPolicy
    from glm_guard.backends._redis import RedisBackend
    from glm_guard.backends._redis._admission import window_ms
    from glm_guard.backends._redis._scripts import sources
    from glm_guard.backends._redis._tokens import new_token

    backend = RedisBackend(url)
    client = redis.Redis.from_url(url)
    aclient = redis.asyncio.Redis.from_url(url)

    full = LimitPolicy(BIG, 1.0, BIG)  # rate + concurrency (+ the cooldown, always checked)
    limiter = backend.limiter("bench-seq-admission")
    alimiter = backend.limiter("bench-seq-admission-async")

    @glm_guard.rate_limited(BIG, 1.0, key="bench-seq-rate", backend=backend)
    def rate_call() -> None:
        return None

    @glm_guard.rate_limited(BIG, 1.0, key="bench-seq-rate-async", backend=backend)
    async def rate_call_async() -> None:
        return None

    @glm_guard.rate_limited(BIG, 1.0, concurrency=BIG, key="bench-seq-lease", backend=backend)
    def lease_call() -> None:
        return None

    @glm_guard.cached_response(ttl=600, key="bench-seq-cache", backend=backend)
    def cached(question: str) -> str:
        return question

    cached("warm")

    item = RateLimitItemPerSecond(BIG)
    storage = RedisStorage(url)
    moving = MovingWindowRateLimiter(storage)
    fixed = FixedWindowRateLimiter(storage)
    amoving = AsyncMovingWindow(storage_from_string("async+" + url, implementation="redispy"))

    rates = [Rate(BIG, Duration.SECOND)]
    pyrate = Limiter(RedisBucket.init(rates, redis.Redis.from_url(url), "bench-seq-pyrate"))
    apyrate = Limiter(await RedisBucket.init(rates, redis.asyncio.Redis.from_url(url), "bench-seq-pyrate-async"))

    gcra_sha = client.script_load(GCRA)
    agcra_keys = ["bench-seq-gcra-async"]

    def gcra_call() -> Any:
        return client.evalsha(gcra_sha, 1, "bench-seq-gcra", 0.001, 1000)

    floor = client.register_script(FLOOR)
    afloor = aclient.register_script(FLOOR)
    # glm_guard's own admission script, sent bare: the gap from the floor to it is the script's
    # work on the server, the gap from it to glm_guard's admission is glm_guard's Python.
    bare_acquire = client.register_script(sources()["acquire"])
    suffixes = ("starts", "leases", "cooldown", "learned", "paused", "spent", "spent_sizes", "burst")  # acquire.lua's
    bare_keys = [backend.key("bench-seq-bare", suffix) for suffix in suffixes]
    bare_limits = f"{BIG} {window_ms(1.0)} {BIG} {int(backend.lease * 1000)} -1"
    bare_release = client.register_script(sources()["release"])
    floor_keys = [backend.key("bench-seq-floor", suffix) for suffix in suffixes]  # as many, as long; strings

    def bare_admission() -> bytes:
        token = new_token()
        bare_acquire(bare_keys, [bare_limits, token])
        return token

    return [
        Case("ping", "PING", "baseline", client.ping),
        Case("floor", "bare one-key Lua script (register_script, EVALSHA)", "baseline", lambda: floor(["bench-floor"])),
        Case(
            "floor_keys",
            "the floor script sent with acquire.lua's eight keys and two arguments",
            "baseline",
            lambda: floor(floor_keys, [bare_limits, new_token()]),
        ),
        Case(
            "bare_acquire",
            "glm_guard's acquire.lua sent bare (register_script), without glm_guard",
            "baseline",
            bare_admission,
            after=lambda token: bare_release(bare_keys[1:2], [token, "bench-seq-bare-released"]),
        ),
        Case(
            "gg_admission",
            "glm_guard admission: rate + concurrency + cooldown, one script",
            "glm_guard",
            lambda: limiter.acquire(full, None),
            after=lambda permit: permit.release(),
        ),
        Case("gg_call_rate", "glm_guard @rate_limited call (rate + cooldown)", "glm_guard", rate_call),
        Case(
            "gg_call_lease",
            "glm_guard @rate_limited call with concurrency (acquire + release)",
            "glm_guard",
            lease_call,
        ),
        Case("gg_cache_hit", "glm_guard @cached_response hit", "glm_guard", lambda: cached("warm")),
        Case("limits_moving", "limits moving window hit", "peer", lambda: moving.hit(item, "bench-seq")),
        Case("limits_fixed", "limits fixed window hit", "peer", lambda: fixed.hit(item, "bench-seq-fixed")),
        Case(
            "pyrate",
            "pyrate-limiter Redis bucket try_acquire",
            "peer",
            lambda: pyrate.try_acquire("bench-seq", blocking=False),
        ),
        Case("gcra", "bare GCRA Lua script (EVALSHA)", "peer", gcra_call),
        Case("ping_async", "PING (asyncio)", "baseline", aclient.ping, is_async=True),
        Case(
            "floor_async",
            "bare one-key Lua script, asyncio",
            "baseline",
            lambda: afloor(["bench-floor-async"]),
            is_async=True,
        ),
        Case(
            "gg_admission_async",
            "glm_guard admission, asyncio",
            "glm_guard",
            lambda: alimiter.acquire_async(full, None),
            is_async=True,
            after=lambda permit: permit.release(),
        ),
        Case(
            "gg_call_rate_async", "glm_guard @rate_limited call, asyncio", "glm_guard", rate_call_async, is_async=True
        ),
        Case(
            "limits_moving_async",
            "limits moving window hit, asyncio (redis-py)",
            "peer",
            lambda: amoving.hit(item, "bench-seq-async"),
            is_async=True,
        ),
        Case(
            "pyrate_async",
            "pyrate-limiter Redis bucket, asyncio",
            "peer",
            lambda: apyrate.try_acquire_async("bench-seq-async", blocking=False),
            is_async=True,
        ),
        Case(
            "gcra_async",
            "bare GCRA Lua script, asyncio",
            "peer",
            lambda: aclient.evalsha(gcra_sha, 1, *agcra_keys, 0.001, 1000),
            is_async=True,
        ),
    ]


_counts = {"own": 0, "background": 0}
_counts_lock = threading.Lock()


def _install_counter() -> None:
    """Count every request redis-py writes to a socket, by who sends it.

    ``own``: sent by the thread that times the operations (the event loop runs there too, so
    every asyncio request counts here).  ``background``: sent by any other thread, such as
    glm_guard's heartbeat every 2 s, a lease renewal or a peer's trimming thread; one that
    lands inside a timed operation is not that operation's round trip, so it is kept apart.
    Wraps whatever ``send_packed_command`` is installed (``bench_common``'s counter included).
    """
    import redis.asyncio.connection
    import redis.connection

    timing_thread = threading.get_ident()

    def count() -> None:
        with _counts_lock:
            _counts["own" if threading.get_ident() == timing_thread else "background"] += 1

    sync_cls = redis.connection.AbstractConnection
    if not getattr(sync_cls.send_packed_command, "_bench_by_thread", False):
        sync_original = sync_cls.send_packed_command

        def send_sync(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            count()
            return sync_original(self, command, *args, **kwargs)

        send_sync._bench_by_thread = True  # type: ignore[attr-defined]
        sync_cls.send_packed_command = send_sync  # type: ignore[method-assign]

    async_cls = redis.asyncio.connection.AbstractConnection
    if not getattr(async_cls.send_packed_command, "_bench_by_thread", False):
        async_original = async_cls.send_packed_command

        async def send_async(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            count()
            return await async_original(self, command, *args, **kwargs)

        send_async._bench_by_thread = True  # type: ignore[attr-defined]
        async_cls.send_packed_command = send_async  # type: ignore[method-assign]


async def _sample(case: Case, n: int) -> tuple[float, int, int]:
    total = 0.0
    trips = 0
    background = 0
    for _ in range(n):
        own, others = _counts["own"], _counts["background"]
        began = time.perf_counter()
        result = case.run()
        if case.is_async:
            result = await result
        total += time.perf_counter() - began
        trips += _counts["own"] - own
        background += _counts["background"] - others
        if case.after is not None:
            done = case.after(result)
            if isinstance(done, Awaitable):
                await done
    return total / n * 1e6, trips, background


async def _measure(url: str, rounds: int, n: int) -> dict[str, Any]:
    _install_counter()
    cases = await build(url)
    for case in cases:
        await _sample(case, 200)  # scripts loaded, connections open, threads started
    per_op: dict[str, list[float]] = {c.key: [] for c in cases}
    trips: dict[str, int] = {c.key: 0 for c in cases}
    background: dict[str, int] = {c.key: 0 for c in cases}
    order = list(cases)
    shuffler = random.Random(1302)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for case in order:
            us, count, extra = await _sample(case, n)
            per_op[case.key].append(us)
            trips[case.key] += count
            background[case.key] += extra
    rows = {}
    for case in cases:
        ping, floor = ("ping_async", "floor_async") if case.is_async else ("ping", "floor")
        ratios = [t / p for t, p in zip(per_op[case.key], per_op[ping], strict=True)]
        floor_ratios = [t / f for t, f in zip(per_op[case.key], per_op[floor], strict=True)]
        rows[case.key] = {
            "label": case.label,
            "who": case.who,
            "asyncio": case.is_async,
            "us": common.spread(per_op[case.key]),
            "x_ping": common.spread(ratios),
            "x_floor": common.spread(floor_ratios),
            "round_trips_per_op": trips[case.key] / (rounds * n),
            "round_trips": trips[case.key],
            "operations": rounds * n,
            # Sent by other threads while this case was being timed: not its own round trips.
            "background_requests": background[case.key],
        }
    return rows


def _server_us(url: str, n: int) -> dict[str, float]:
    """Microseconds the server spends in each script (``INFO commandstats``, reset before each):
    the floor, the floor given acquire.lua's keys, and acquire.lua itself.  The rest of a round
    trip is the client's and the network's."""
    import redis

    from glm_guard.backends._redis._admission import window_ms
    from glm_guard.backends._redis._scripts import sources
    from glm_guard.backends._redis._tokens import new_token

    client = redis.Redis.from_url(url)
    floor = client.register_script(FLOOR)
    acquire = client.register_script(sources()["acquire"])
    keys = [f"bench-server{{k}}:{i}" for i in range(8)]
    floor_keys = [f"bench-server{{k}}:floor{i}" for i in range(8)]
    limits = f"{BIG} {window_ms(1.0)} {BIG} 30000 -1"
    scripts = {
        "floor": lambda: floor(keys[:1]),
        "floor_keys": lambda: floor(floor_keys, [limits, new_token()]),
        "bare_acquire": lambda: acquire(keys, [limits, new_token()]),  # leases pile up, far below BIG
    }
    found = {}
    for name, run in scripts.items():
        run()  # loaded
        client.config_resetstat()
        for _ in range(n):
            run()
        found[name] = float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    client.delete(*keys, *floor_keys)
    client.close()
    return found


def measure(args: Any) -> dict[str, Any]:
    rounds, n = (3, 200) if args.quick else (9, 1000)
    with common.redis_url(args.redis_url) as url:
        common.log(f"redis, one connection: {rounds} interleaved rounds x {n} operations per case")
        rows = asyncio.run(_measure(url, rounds, n))
        server = _server_us(url, n * 2)
    admission = rows["gg_admission"]
    return {
        "rounds": rounds,
        "operations_per_sample": n,
        "cases": rows,
        "server_us": server,
        "targets": [
            {
                "target": f"one admission (rate + concurrency + cooldown) ≤ {FLOOR_LIMIT} × a bare one-key script",
                "measured": admission["x_floor"]["median"],
                "p25": admission["x_floor"]["p25"],
                "p75": admission["x_floor"]["p75"],
                "limit": FLOOR_LIMIT,
                "unit": "× floor",
                "met": admission["x_floor"]["median"] <= FLOOR_LIMIT,
            },
            {
                "target": "in exactly one round trip",
                "measured": admission["round_trips_per_op"],
                "p25": admission["round_trips_per_op"],
                "p75": admission["round_trips_per_op"],
                "limit": 1.0,
                "unit": "round trips",
                # Whole counts, not the rounded ratio: every admission exactly one request.
                "met": admission["round_trips"] == admission["operations"],
            },
        ],
    }


def render(section: dict[str, Any], out: Path) -> str:
    rows = section["cases"]
    if "bare_acquire" not in rows:  # measured before the floor script existed: nothing to compare
        return (
            "# Redis: one connection, one operation at a time\n\nThese results predate the floor script; "
            "re-run them with `python3 benchmarks/run.py --only redis`.\n"
        )
    pyplot = common.plt()
    lines = [
        "# Redis: one connection, one operation at a time",
        "",
        f"{section['rounds']} rounds × {section['operations_per_sample']} operations per case, cases interleaved "
        "in a shuffled order each round. Each operation is timed on its own; × floor and × PING are taken round "
        "by round against the floor script and the PING of the same round (sync cases against sync ones, "
        "asyncio cases against asyncio ones). Round trips are counted on the client: every request redis-py "
        "writes to its socket from the timing thread. Requests other threads sent meanwhile (glm_guard's "
        "heartbeat every 2 s) are reported apart: the background column is how many of them landed inside "
        "that case's timed operations.",
        "",
        "Every limit is a million per second, so every admission succeeds at once.",
        "",
        "Every request goes through redis-py's public command path (pool checkout, retry wrapper, response "
        "parsing), glm_guard's included: it runs its scripts with `register_script`. The *floor* is the least "
        "any atomic admission costs on this path: a one-key Lua script that only reads its key, sent by "
        "EVALSHA. What glm_guard adds to it is its script's own work on the server (the clock, the cooldown, "
        "the window and the leases) and a few microseconds of Python.",
        "",
        "## Target",
        "",
        common.table(
            ["target", "measured", "p25–p75", "limit", "verdict"],
            [
                [
                    t["target"],
                    f"{t['measured']:.2f} {t['unit']}",
                    f"{t['p25']:.2f}–{t['p75']:.2f}",
                    f"{t['limit']:g}",
                    common.verdict(t["met"]),
                ]
                for t in section["targets"]
            ],
            "lrrrl",
        ),
        "",
        f"Where the time goes: glm_guard's `acquire.lua` sent bare through redis-py costs "
        f"{rows['bare_acquire']['x_floor']['median']:.2f} × the floor (the script's work on the server: the clock, "
        "the cooldown, the window and the leases, eight commands in all), and a glm_guard admission costs "
        f"{rows['gg_admission']['us']['median'] / rows['bare_acquire']['us']['median']:.2f} × that bare script "
        "(its Python: the per-key turn to ask, the token, the lease bookkeeping, the permit; and the socket "
        "timeout its client keeps so a paused server never hangs a call, which the bare clients here go without).",
        "",
        *_server_lines(section, rows),
        "## All operations",
        "",
        common.table(
            ["operation", "median µs", "p25–p75 µs", "× floor", "p25–p75", "× PING", "round trips", "background"],
            [
                [
                    ("**" + r["label"] + "**") if r["who"] == "glm_guard" else r["label"],
                    common.fmt(r["us"]["median"], 1),
                    f"{r['us']['p25']:.1f}–{r['us']['p75']:.1f}",
                    common.fmt(r["x_floor"]["median"], 2),
                    f"{r['x_floor']['p25']:.2f}–{r['x_floor']['p75']:.2f}",
                    common.fmt(r["x_ping"]["median"], 2),
                    common.fmt(r["round_trips_per_op"], 2),
                    str(r.get("background_requests", "–")),
                ]
                for r in rows.values()
            ],
            "lrrrrrrr",
        ),
        "",
        "![Redis operations](redis_peers.png)",
        "",
        "The peers' scripts differ in what they check: `limits` moving window reads the client's clock and keeps a "
        "list of up to `limit` timestamps; `pyrate-limiter` reads the client's clock and keeps one sorted-set "
        "member per call until a background thread trims it; the GCRA script keeps one number. glm_guard's "
        "script reads the server's clock, checks the cooldown, the window and the concurrency leases, and "
        "reserves the next legal start when the window is full.",
        "",
    ]
    shown = list(rows.values())
    fig, ax = pyplot.subplots(figsize=(8, 0.3 * len(shown) + 1.2))
    medians = [r["x_floor"]["median"] for r in shown]
    low = [m - r["x_floor"]["p25"] for m, r in zip(medians, shown, strict=True)]
    high = [r["x_floor"]["p75"] - m for m, r in zip(medians, shown, strict=True)]
    colours = [
        "#c0392b" if r["who"] == "glm_guard" else ("#34495e" if r["who"] == "baseline" else "#7f8c8d") for r in shown
    ]
    ax.barh(range(len(shown)), medians, xerr=[low, high], color=colours, capsize=2)
    ax.axvline(FLOOR_LIMIT, color="#c0392b", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(shown)), [r["label"] for r in shown])
    ax.invert_yaxis()
    ax.set_xlabel(f"time per operation ÷ the floor script in the same round (dotted: the {FLOOR_LIMIT} × target)")
    ax.set_title("One connection, sequential: glm_guard (red), peers (grey), floor and PING (dark)")
    fig.savefig(out / "redis_peers.png")
    pyplot.close(fig)
    return "\n".join(lines)


def _server_lines(section: dict[str, Any], rows: dict[str, Any]) -> list[str]:
    server = section.get("server_us")
    if not server or "floor_keys" not in rows:  # measured before these were
        return []
    text = (
        "Apart, on the server alone (`INFO commandstats`, microseconds per script run): the floor "
        f"{server['floor']:.1f} µs, the floor given acquire.lua's eight keys and two arguments "
        f"{server['floor_keys']:.1f} µs, acquire.lua {server['bare_acquire']:.1f} µs. End to end the floor with "
        f"those keys and arguments costs {rows['floor_keys']['x_floor']['median']:.2f} × the floor: what the "
        "client spends packing, sending and parsing them."
    )
    if rows["bare_acquire"]["x_floor"]["median"] > FLOOR_LIMIT:
        text += (
            f" So acquire.lua sent bare is already above the {FLOOR_LIMIT} × line before glm_guard runs a line of "
            "Python: the line asks for less than what its keys and its checks (an exact window, the leases, the "
            "cooldown, the pause) cost on the server and on the wire."
        )
    return [text, ""]


if __name__ == "__main__":
    common.part_main("redis_peers", measure)
