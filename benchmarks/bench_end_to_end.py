"""End to end against the GLM simulator: real HTTP, a real concurrency limit, 1302s counted.

The simulator (``glm_guard.testing``) admits ``concurrency`` requests in flight per key and
model and answers each after ``latency`` seconds, so its capacity is ``concurrency / latency``
answers per second; a request over the limit gets ``429 {"error":{"code":"1302",...}}`` at once.
The same callers (32 in all, split across processes) then run each way for the same time:

- **unguarded**: one POST, the error raised to the caller (the seed's services today);
- **sleep(1.2) remedy**: the seed's 方案2, ``await asyncio.sleep(1.2)`` after each call
  (an error skips the sleep, as the seed's code does);
- **aiolimiter per process**: ``AsyncLimiter(capacity, 1 s)`` in each process, no retry;
- **asyncio.Semaphore** in one process: the most this machine's HTTP stack gets out of the
  simulator, so a shortfall of glm_guard can be told apart from the harness's own;
- **glm_guard**: ``@retry_on_1302(max_tries=5)`` over ``@rate_limited(concurrency=4)``, on the
  local backend (one process) and on Redis (1, 4 and 8 processes);
- **openai SDK + asyncio.Semaphore** in one process: what the SDK's own per-request work leaves
  of the capacity, the ceiling of the row below;
- **glm_guard at the transport**: the openai SDK (``AsyncOpenAI``) and zai-sdk (``ZhipuAiClient``,
  sync, so each caller is a thread) given ``glm_guard.http``'s client with ``concurrency=4``
  on Redis, their own retry settings left at their defaults (1 and 4 processes).

``python benchmarks/bench_end_to_end.py --out end_to_end.json`` (starts its own redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bench_common as common

API_KEY = "bench-key"
MODEL = "glm-4"
CALLERS = 32
MODES = {
    "unguarded": ("unguarded", 4),
    "sleep": ("seed's asyncio.sleep(1.2) remedy", 4),
    "aiolimiter": ("aiolimiter per process (rate = capacity)", 4),
    "semaphore": ("asyncio.Semaphore(concurrency), 1 process: the ceiling", 1),
    "gg_local": ("glm_guard, local backend", 1),
    "gg_redis_1": ("glm_guard, Redis, 1 process", 1),
    "gg_redis_4": ("glm_guard, Redis, 4 processes", 4),
    "gg_redis_8": ("glm_guard, Redis, 8 processes", 8),
    "openai_semaphore": ("openai SDK + asyncio.Semaphore, 1 process: the SDK's ceiling", 1),
    "gg_openai_1": ("glm_guard.http + openai SDK, Redis, 1 process", 1),
    "gg_openai_4": ("glm_guard.http + openai SDK, Redis, 4 processes", 4),
    "gg_zai_1": ("glm_guard.http + zai-sdk (threads), Redis, 1 process", 1),
    "gg_zai_4": ("glm_guard.http + zai-sdk (threads), Redis, 4 processes", 4),
}
SDK_MODES = ("gg_openai", "gg_zai", "openai_semaphore")
PRELOAD = [
    "__main__",
    "asyncio",
    "httpx",
    "redis",
    "redis.asyncio",
    "glm_guard",
    "glm_guard.backends._redis",
    "aiolimiter",
    "glm_guard.http",
    "openai",
    "zai",
]


class GLMHTTPError(Exception):
    """The provider's error, status and body as text: what a home-made client raises."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status} {body}")
        self.status_code = status


def _question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"推理问题 {i}"}]


def make_sdk_call(mode: str, job: dict[str, Any], threads: Any) -> Callable[[int], Any]:
    """An SDK with its defaults, given glm_guard.http's client: the one line a user adds."""
    import glm_guard.http

    policy: dict[str, Any] = {"concurrency": job["concurrency"], "key": job["key"], "backend": job["redis_url"]}
    if mode == "openai_semaphore":  # the same SDK with no guard: what its own cost leaves of the capacity
        import httpx
        import openai

        bare = openai.AsyncOpenAI(api_key=API_KEY, base_url=job["base_url"], http_client=httpx.AsyncClient())
        semaphore = asyncio.Semaphore(job["concurrency"])

        async def ask_bare(i: int) -> Any:
            async with semaphore:
                return await bare.chat.completions.create(model=MODEL, messages=_question(i), max_tokens=16)  # type: ignore[arg-type]

        return ask_bare
    if mode.startswith("gg_openai"):
        import openai

        client = openai.AsyncOpenAI(
            api_key=API_KEY, base_url=job["base_url"], http_client=glm_guard.http.async_client(**policy)
        )

        async def ask_openai(i: int) -> Any:
            return await client.chat.completions.create(model=MODEL, messages=_question(i), max_tokens=16)  # type: ignore[arg-type]

        return ask_openai
    from zai import ZhipuAiClient

    zai = ZhipuAiClient(api_key=API_KEY, base_url=job["base_url"], http_client=glm_guard.http.client(**policy))

    def create(i: int) -> Any:
        return zai.chat.completions.create(model=MODEL, messages=_question(i), max_tokens=16)

    async def ask_zai(i: int) -> Any:
        return await asyncio.get_running_loop().run_in_executor(threads, create, i)

    return ask_zai


def make_call(mode: str, job: dict[str, Any], http: Any) -> Callable[[int], Any]:
    url = job["chat_url"]

    async def call_glm_api(i: int) -> Any:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"推理问题 {i}"}], "max_tokens": 16}
        response = await http.post(url, json=body)
        if response.status_code >= 400:
            raise GLMHTTPError(response.status_code, response.text)
        return response.json()

    if mode == "unguarded":
        return call_glm_api
    if mode == "sleep":

        async def call_api_with_delay(i: int) -> Any:
            response = await call_glm_api(i)
            await asyncio.sleep(1.2)
            return response

        return call_api_with_delay
    if mode == "aiolimiter":
        from aiolimiter import AsyncLimiter

        limiter = AsyncLimiter(job["capacity"], 1.0)

        async def limited(i: int) -> Any:
            async with limiter:
                return await call_glm_api(i)

        return limited
    if mode == "semaphore":
        semaphore = asyncio.Semaphore(job["concurrency"])

        async def bounded(i: int) -> Any:
            async with semaphore:
                return await call_glm_api(i)

        return bounded

    import glm_guard

    backend = "local" if mode == "gg_local" else job["redis_url"]

    @glm_guard.retry_on_1302(max_tries=5)
    @glm_guard.rate_limited(concurrency=job["concurrency"], key=job["key"], backend=backend)
    async def guarded(i: int) -> Any:
        return await call_glm_api(i)

    return guarded


def worker(mode: str, job: dict[str, Any], callers: int, ready: Any, go: Any, start_at: Any, results: Any) -> None:
    async def main() -> list[tuple[float, float, str]]:
        import httpx

        limits = httpx.Limits(max_connections=callers + 4, max_keepalive_connections=callers + 4)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        threads = ThreadPoolExecutor(callers)
        async with httpx.AsyncClient(timeout=30.0, limits=limits, headers=headers) as http:
            call = make_sdk_call(mode, job, threads) if mode.startswith(SDK_MODES) else make_call(mode, job, http)
            with contextlib.suppress(Exception):  # open a connection before the clock starts
                if mode.startswith(SDK_MODES):
                    await call(-1)
                else:
                    await http.post(job["chat_url"], json={"model": MODEL, "messages": _question(-1)})
            ready.put(os.getpid())
            while not go.is_set():  # noqa: ASYNC110 - a multiprocessing.Event has no async wait
                await asyncio.sleep(0.002)
            begin = start_at.value
            end = begin + job["seconds"]
            outcomes: list[tuple[float, float, str]] = []

            async def caller(c: int) -> None:
                i = c
                while time.monotonic() < end:
                    began = time.monotonic()
                    try:
                        await call(i)
                        outcome = "ok"
                    except Exception:
                        outcome = "failed"
                    outcomes.append((began, time.monotonic(), outcome))
                    i += callers

            await asyncio.sleep(max(begin - time.monotonic(), 0.0))
            tasks = [asyncio.ensure_future(caller(c + os.getpid() * 1000)) for c in range(callers)]
            await asyncio.sleep(max(end - time.monotonic(), 0.0))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        threads.shutdown(wait=True)
        return outcomes

    results.put(asyncio.run(main()))


NUMBERS = (
    "calls",
    "succeeded",
    "failed",
    "errors_1302",
    "requests_sent",
    "peak_in_flight",
    "throughput_per_s",
    "fraction_of_capacity",
    "latency_p50_s",
    "latency_p99_s",
)


def run_mode(ctx: Any, mode: str, job: dict[str, Any], simulator: Any) -> dict[str, Any]:
    processes = MODES[mode][1]
    per_process = CALLERS // processes
    ready, results = ctx.Queue(), ctx.Queue()
    go, start_at = ctx.Event(), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=worker, args=(mode, job, per_process, ready, go, start_at, results))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    simulator.reset_stats()
    begin = time.monotonic() + 0.2
    start_at.value = begin
    go.set()
    time.sleep(max(begin + job["seconds"] - time.monotonic(), 0.0))
    stats = simulator.stats
    outcomes = [o for _ in procs for o in results.get(timeout=60)]
    for p in procs:
        p.join(30)
    end = begin + job["seconds"]
    finished = [o for o in outcomes if o[1] <= end]
    ok = [o for o in finished if o[2] == "ok"]
    latencies = [o[1] - o[0] for o in finished]
    # Throughput in the steady state: answers completed after the first second, per second.
    steady_from = begin + min(1.0, job["seconds"] / 4)
    steady = sum(1 for o in ok if o[1] > steady_from)
    throughput = steady / (end - steady_from)
    return {
        "label": MODES[mode][0],
        "processes": processes,
        "callers": per_process * processes,
        "calls": len(finished),
        "succeeded": len(ok),
        "failed": sum(1 for o in finished if o[2] == "failed"),
        "errors_1302": int(stats.rejected.get("1302", 0)),
        "requests_sent": int(stats.total_requests),
        "peak_in_flight": int(stats.peak_in_flight),
        "throughput_per_s": throughput,
        "fraction_of_capacity": throughput / job["capacity"],
        "latency_p50_s": common.percentile(latencies, 50),
        "latency_p99_s": common.percentile(latencies, 99),
    }


def measure(args: Any) -> dict[str, Any]:
    from glm_guard.testing import run_simulator

    seconds = 2.0 if args.quick else args.seconds
    repeats = 1 if args.quick else args.repeats
    concurrency, latency = args.concurrency, args.latency
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with common.redis_url(args.redis_url) as url, run_simulator(concurrency=concurrency, latency=latency) as sim:
        import redis

        client = redis.Redis.from_url(url)
        for repeat in range(repeats):
            order = list(MODES)
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for mode in order:
                client.flushall()
                job = {
                    "chat_url": sim.chat_url,
                    "base_url": sim.base_url,
                    "redis_url": url,
                    "concurrency": concurrency,
                    "capacity": concurrency / latency,
                    "seconds": seconds,
                    "key": f"bench-e2e-{mode}-{repeat}",
                }
                common.log(f"end to end: {mode} ({MODES[mode][1]} process(es)), {seconds:g} s (repeat {repeat + 1})")
                runs[mode].append(run_mode(ctx, mode, job, sim))
        client.close()
    rows: dict[str, Any] = {}
    for mode, done in runs.items():
        row: dict[str, Any] = {k: done[0][k] for k in ("label", "processes", "callers")}
        for metric in NUMBERS:
            row[metric] = common.spread([r[metric] for r in done])
        row["worst"] = {
            "errors_1302": max(r["errors_1302"] for r in done),
            "failed": max(r["failed"] for r in done),
            "fraction_of_capacity": min(r["fraction_of_capacity"] for r in done),
        }
        row["runs"] = done
        rows[mode] = row
    guarded = {k: v["worst"] | {"label": v["label"]} for k, v in rows.items() if k.startswith("gg_")}
    return {
        "simulator": {"concurrency": concurrency, "latency_s": latency, "capacity_per_s": concurrency / latency},
        "callers": CALLERS,
        "seconds": seconds,
        "repeats": repeats,
        "modes": rows,
        "targets": [
            {
                "target": f"{row['label']}: zero 1302s, zero failed calls, ≥ 90 % of capacity (worst repeat)",
                "errors_1302": row["errors_1302"],
                "failed": row["failed"],
                "fraction_of_capacity": row["fraction_of_capacity"],
                "met": row["errors_1302"] == 0 and row["failed"] == 0 and row["fraction_of_capacity"] >= 0.9,
            }
            for row in guarded.values()
        ],
    }


def render(section: dict[str, Any], out: Path) -> str:
    pyplot = common.plt()
    sim = section["simulator"]
    rows = section["modes"]

    def cell(s: dict[str, float], form: str) -> str:
        text = form.format(s["median"])
        if section["repeats"] > 1 and s["min"] != s["max"]:
            text += f" [{form.format(s['min'])}–{form.format(s['max'])}]"
        return text

    lines = [
        "# End to end against the GLM simulator",
        "",
        f"The simulator admits {sim['concurrency']} requests in flight and answers each after "
        f"{sim['latency_s'] * 1000:g} ms, so its capacity is {sim['capacity_per_s']:g} answers per second; "
        "more in flight get HTTP 429 with business code 1302 at once. "
        f"{section['callers']} callers (split across the processes shown) call it in a loop over real HTTP "
        f"(httpx) for {section['seconds']:g} s per way of calling, one way after another against the same "
        f"simulator, {section['repeats']} interleaved round(s). A call that raises counts as failed. "
        "Throughput counts answers completed after the first second "
        "(the steady state), per second, as a fraction of capacity.",
        "",
        "## Targets",
        "",
        common.table(
            ["target", "1302s", "failed", "of capacity", "verdict"],
            [
                [
                    t["target"],
                    t["errors_1302"],
                    t["failed"],
                    f"{t['fraction_of_capacity']:.1%}",
                    common.verdict(t["met"]),
                ]
                for t in section["targets"]
            ],
            "lrrrl",
        ),
        "",
        "## Every way of calling",
        "",
        "Medians over the rounds; with more than one round, the range follows in brackets.",
        "",
        common.table(
            [
                "way",
                "processes",
                "calls",
                "1302s seen",
                "failed",
                "answers/s",
                "of capacity",
                "p50 latency s",
                "p99 latency s",
                "peak in flight",
            ],
            [
                [
                    ("**" + r["label"] + "**") if k.startswith("gg_") else r["label"],
                    r["processes"],
                    cell(r["calls"], "{:.0f}"),
                    cell(r["errors_1302"], "{:.0f}"),
                    cell(r["failed"], "{:.0f}"),
                    cell(r["throughput_per_s"], "{:.1f}"),
                    cell(r["fraction_of_capacity"], "{:.1%}"),
                    cell(r["latency_p50_s"], "{:.3f}"),
                    cell(r["latency_p99_s"], "{:.3f}"),
                    cell(r["peak_in_flight"], "{:.0f}"),
                ]
                for k, r in rows.items()
            ],
            "lrrrrrrrrr",
        ),
        "",
        "Latency is the caller's: from calling to getting the answer or the error, waits, retries and the "
        "remedy's sleep included.",
        "",
        "![End to end](end_to_end.png)",
        "",
    ]
    keys = list(rows)
    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 3.8))
    colours = ["#c0392b" if k.startswith("gg_") else "#7f8c8d" for k in keys]
    labels = [rows[k]["label"] for k in keys]
    left.barh(range(len(keys)), [rows[k]["fraction_of_capacity"]["median"] * 100 for k in keys], color=colours)
    left.axvline(90, color="#c0392b", linestyle=":", linewidth=1)
    left.set_yticks(range(len(keys)), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("answers, % of the simulator's capacity (dotted: 90 %)")
    right.barh(range(len(keys)), [max(rows[k]["errors_1302"]["median"], 0.5) for k in keys], color=colours)
    right.set_xscale("log")
    right.set_yticks(range(len(keys)), [""] * len(keys))
    right.invert_yaxis()
    right.set_xlabel("1302s the simulator sent (log; 0 drawn as 0.5)")
    fig.suptitle("glm_guard (red) and the alternatives (grey) against the GLM simulator")
    fig.savefig(out / "end_to_end.png")
    pyplot.close(fig)
    return "\n".join(lines)


def _extra(parser: Any) -> None:
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.1)


if __name__ == "__main__":
    common.part_main("end_to_end", measure, _extra)
