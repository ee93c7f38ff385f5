"""``glm-guard demo``: one workload against the GLM simulator, unguarded, slept, and guarded.

The seed's "部署前 / 部署后" section promises fewer 1302s; this shows it on a real HTTP
workload instead of asserting it.  The same requests run three ways: with no protection,
with the seed's temporary remedy (``asyncio.sleep(1.2)`` after each call), and through
:class:`~glm_guard.AsyncLLMClient` with the seed's ``except GLMRateLimitException`` fallback.
The figures come from the callers' own outcomes and latencies plus the simulator's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from ._config import get_settings, mask_url
from ._errors import GLMRateLimitException

__all__ = ["main_demo"]

DEMO_KEY = "glm-guard-demo-key"
MODES = ("unguarded", "sleep", "guarded")
BUSY = "抱歉,系统繁忙,请稍后重试。"


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Everything a run needs; picklable, so spawned worker processes get the same."""

    requests: int
    callers: int
    concurrency: int
    latency: float
    sleep: float
    max_tries: int
    calls_per_minute: int
    model: str
    backend: str
    processes: int
    timeout: float


@dataclass(frozen=True, slots=True)
class RunResult:
    """The figures of one way of running the workload."""

    name: str
    label: str
    requests: int
    errors_1302: int
    failed: int
    fallbacks: int
    answered: int
    success_rate: float
    throughput: float
    p50_latency: float
    p99_latency: float
    peak_in_flight: int
    wall_seconds: float


Outcome = tuple[str, float]  # ("ok" | "fallback" | "failed", seconds the caller waited)


def _label(mode: str, cfg: DemoConfig) -> str:
    return {"unguarded": "unguarded", "sleep": f"sleep({cfg.sleep:g}) remedy", "guarded": "glm_guard"}[mode]


def _messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": f"推理问题 {i}: 请逐步分析并给出结论。"},
    ]


# -- one process's share of the workload -------------------------------------------------


async def _run_share(
    mode: str, base_url: str, cfg: DemoConfig, queues: Sequence[Sequence[int]], tick: Callable[[], None]
) -> list[Outcome]:
    """Each queue is one caller working through its requests one after another."""
    import httpx

    from ._client import AsyncLLMClient, _parse

    outcomes: list[Outcome] = []
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}
    async with httpx.AsyncClient(timeout=cfg.timeout, headers=headers) as http:
        client = None
        if mode == "guarded":
            client = AsyncLLMClient(
                api_key=DEMO_KEY,
                base_url=base_url,
                model=cfg.model,
                max_tries=cfg.max_tries,
                timeout=cfg.timeout,
                calls_per_minute=cfg.calls_per_minute,
                concurrency=cfg.concurrency,
                backend=cfg.backend,
            )

        async def call_glm_api(i: int) -> dict[str, Any]:
            """What the seed's services do today: one POST, no protection."""
            body = {"model": cfg.model, "messages": _messages(i), "temperature": 0.7, "max_tokens": 2000}
            return _parse(await http.post(url, json=body))

        async def call_api_with_delay(i: int) -> dict[str, Any]:
            """The seed's 方案2, as written: an error skips the sleep."""
            response = await call_glm_api(i)
            await asyncio.sleep(cfg.sleep)
            return response

        async def guarded(i: int) -> dict[str, Any]:
            assert client is not None
            return await client.call_api(messages=_messages(i), temperature=0.7, max_tokens=2000)

        one = {"unguarded": call_glm_api, "sleep": call_api_with_delay, "guarded": guarded}[mode]

        async def caller(queue: Sequence[int]) -> None:
            for i in queue:
                began = time.monotonic()
                try:
                    await one(i)
                    outcome = "ok"
                except GLMRateLimitException:
                    outcome = "fallback"  # the seed's except-branch: serve BUSY
                except Exception:
                    outcome = "failed"
                outcomes.append((outcome, time.monotonic() - began))
                tick()

        try:
            await asyncio.gather(*(caller(q) for q in queues))
        finally:
            if client is not None:
                await client.aclose()
    return outcomes


_progress_counter: Any = None
_start_barrier: Any = None


def _init_worker(counter: Any, barrier: Any) -> None:
    global _progress_counter, _start_barrier
    _progress_counter, _start_barrier = counter, barrier


def _worker_run(mode: str, base_url: str, cfg: DemoConfig, queues: list[list[int]]) -> list[Outcome]:
    """Entry point of a spawned worker process: wait for the others, then run the share."""
    _start_barrier.wait(30)

    def tick() -> None:
        with _progress_counter.get_lock():
            _progress_counter.value += 1

    return asyncio.run(_run_share(mode, base_url, cfg, queues, tick))


def _worker_ready(_: int) -> int:
    """Makes every worker import everything and meet once, before anything is timed."""
    import httpx  # noqa: F401

    from . import _client  # noqa: F401

    _start_barrier.wait(30)
    return os.getpid()


# -- the parent: simulator, runs, figures ------------------------------------------------


def _queues(cfg: DemoConfig) -> list[list[int]]:
    return [list(range(c, cfg.requests, cfg.callers)) for c in range(cfg.callers)]


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: always a latency some caller actually saw."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _summarise(mode: str, cfg: DemoConfig, outcomes: list[Outcome], wall: float, stats: Any) -> RunResult:
    answered = sum(1 for kind, _ in outcomes if kind == "ok")
    latencies = [seconds for _, seconds in outcomes]
    return RunResult(
        name=mode,
        label=_label(mode, cfg),
        requests=len(outcomes),
        errors_1302=int(stats.rejected.get("1302", 0)),
        failed=sum(1 for kind, _ in outcomes if kind == "failed"),
        fallbacks=sum(1 for kind, _ in outcomes if kind == "fallback"),
        answered=answered,
        success_rate=answered / len(outcomes) if outcomes else 0.0,
        throughput=answered / wall if wall > 0 else 0.0,
        p50_latency=_percentile(latencies, 50),
        p99_latency=_percentile(latencies, 99),
        peak_in_flight=int(stats.peak_in_flight),
        wall_seconds=wall,
    )


class _Progress:
    """A one-line bar on stderr (redrawn on a terminal, one line per run otherwise)."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = bool(stream is not None and stream.isatty())
        self.label = ""
        self.done = 0
        self.shown = -1.0

    def start(self, label: str) -> None:
        self.label, self.done, self.shown = label, 0, -1.0
        self.draw(0)

    def tick(self) -> None:
        self.draw(self.done + 1)

    def draw(self, done: int) -> None:
        self.done = done
        if self.stream is None or not self.tty:
            return
        now = time.monotonic()
        if done < self.total and now - self.shown < 0.1:
            return
        self.shown = now
        width = 24
        filled = width * done // max(1, self.total)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r  {self.label:<18} [{bar}] {done}/{self.total}")
        self.stream.flush()

    def finish(self, wall: float) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.draw(self.done)
            self.stream.write(f"  {wall:.1f}s\n")
        else:
            self.stream.write(f"  {self.label}: {self.done}/{self.total} requests in {wall:.1f}s\n")
        self.stream.flush()


def run_demo(cfg: DemoConfig, progress: _Progress) -> list[RunResult]:
    """Start the simulator and run the workload the three ways, one after another."""
    from .testing import run_simulator

    queues = _queues(cfg)
    results: list[RunResult] = []
    with run_simulator(concurrency=cfg.concurrency, latency=cfg.latency, stream_chunk_delay=0) as sim:
        pool = None
        counter: Any = None
        try:
            if cfg.processes > 1:
                ctx = multiprocessing.get_context("spawn")
                counter = ctx.Value("i", 0)
                barrier = ctx.Barrier(cfg.processes)
                pool = ctx.Pool(cfg.processes, initializer=_init_worker, initargs=(counter, barrier))
                pool.map(_worker_ready, range(cfg.processes), chunksize=1)
            for mode in MODES:
                progress.start(_label(mode, cfg))
                sim.reset_stats()
                began = time.monotonic()
                if pool is None:
                    outcomes = asyncio.run(_run_share(mode, sim.base_url, cfg, queues, progress.tick))
                else:
                    counter.value = 0
                    shares = [(mode, sim.base_url, cfg, queues[p :: cfg.processes]) for p in range(cfg.processes)]
                    pending = pool.starmap_async(_worker_run, shares, chunksize=1)
                    while not pending.ready():
                        pending.wait(0.1)
                        progress.draw(counter.value)
                    progress.draw(counter.value)
                    outcomes = [outcome for share in pending.get(1) for outcome in share]
                wall = time.monotonic() - began
                progress.finish(wall)
                results.append(_summarise(mode, cfg, outcomes, wall, sim.stats))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return results


# -- output ------------------------------------------------------------------------------

_ROWS: tuple[tuple[str, Callable[[RunResult], str]], ...] = (
    ("requests", lambda r: str(r.requests)),
    ("1302 errors (simulator)", lambda r: str(r.errors_1302)),
    ("failed calls", lambda r: str(r.failed)),
    ("success rate", lambda r: f"{r.success_rate:.1%}"),
    ("fallbacks served", lambda r: str(r.fallbacks)),
    ("throughput (answers/s)", lambda r: f"{r.throughput:.2f}"),
    ("p50 latency (s)", lambda r: f"{r.p50_latency:.3f}"),
    ("p99 latency (s)", lambda r: f"{r.p99_latency:.3f}"),
    ("peak in flight", lambda r: str(r.peak_in_flight)),
    ("wall time (s)", lambda r: f"{r.wall_seconds:.2f}"),
)


def _describe(cfg: DemoConfig) -> str:
    where = "local backend" if cfg.backend == "local" else f"redis backend {mask_url(cfg.backend)}"
    procs = f"{cfg.processes} processes" if cfg.processes > 1 else "1 process"
    return (
        f"{cfg.requests} reasoning requests from {cfg.callers} concurrent callers ({procs}, {where}) "
        f"against a GLM simulator that allows {cfg.concurrency} in flight, {cfg.latency:g}s per answer"
    )


def render_table(cfg: DemoConfig, results: Sequence[RunResult]) -> str:
    """The comparison table, one column per run, in the spirit of the seed's 部署前 / 部署后."""
    label_width = max(len(name) for name, _ in _ROWS)
    widths = [max(len(r.label), 9) for r in results]
    lines = [f"glm-guard demo: {_describe(cfg)}", ""]
    lines.append(" " * label_width + "".join(f"  {r.label:>{w}}" for r, w in zip(results, widths, strict=True)))
    for name, cell in _ROWS:
        cells = "".join(f"  {cell(r):>{w}}" for r, w in zip(results, widths, strict=True))
        lines.append(f"{name:<{label_width}}{cells}")
    guarded = results[-1]
    lines.append("")
    summary = (
        f"glm_guard: {guarded.failed} of {guarded.requests} calls failed, "
        f"{guarded.errors_1302} 1302s, {guarded.fallbacks} fallbacks"
    )
    others = ", ".join(f"{r.label} lost {r.failed} of {r.requests}" for r in results[:-1])
    lines.append(f"{summary} ({others})." if others else f"{summary}.")
    if cfg.processes > 1 and cfg.backend == "local":
        lines.append("note: the local backend limits each process on its own; use --backend redis to share one limit.")
    elif cfg.processes > 1:
        lines.append(
            f"shared limit held across {cfg.processes} processes: peak in flight {guarded.peak_in_flight} "
            f"(limit {cfg.concurrency})."
        )
    return "\n".join(lines)


def monitor_figures() -> dict[str, Any]:
    """What ``glm_guard.stats()`` (the monitor's numbers) recorded for the guarded run."""
    from .monitoring import stats

    return dict(stats()["total"])


def render_monitor(figures: Mapping[str, Any], processes: int) -> str:
    where = "this process" if processes == 1 else "this process (workers report to their own, or to Redis)"
    waits, latency = figures["waits"], figures["latency"]
    rate = figures["success_rate"]
    lines = [
        f"monitor (glm_guard.stats(), {where}):",
        f"  calls {figures['calls']}, successes {figures['successes']}, fallbacks {figures['fallbacks']}, "
        f"success rate {'-' if rate is None else f'{rate:.1%}'}",
        f"  provider attempts {figures['attempts']}, 1302 errors seen {figures['errors_1302']}, "
        f"retries {figures['retries']}",
        f"  waited for a permit: {waits['count']} calls, p50 {waits['p50'] or 0:.3f}s, p99 {waits['p99'] or 0:.3f}s",
        f"  call latency: p50 {latency['p50'] or 0:.3f}s, p99 {latency['p99'] or 0:.3f}s",
    ]
    return "\n".join(lines)


def to_json(cfg: DemoConfig, results: Sequence[RunResult], monitor: Mapping[str, Any] | None = None) -> str:
    config = asdict(cfg)
    config["backend"] = mask_url(cfg.backend)
    document: dict[str, Any] = {"config": config, "runs": [asdict(r) for r in results]}
    if monitor is not None:
        document["monitor"] = monitor
    return json.dumps(document, ensure_ascii=False, indent=2)


# -- command line ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 <= value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glm-guard demo",
        description=(
            "Start a local GLM simulator and run one workload of concurrent reasoning requests three ways: "
            "unguarded, with the seed's sleep-after-each-call remedy, and through glm_guard's client "
            "(rate limit + retry + the seed's GLMRateLimitException fallback). Prints a comparison table: "
            "requests, 1302 errors, failed calls, success rate, fallbacks, throughput, p50/p99 latency. "
            "Progress goes to stderr. No network: everything stays on 127.0.0.1."
        ),
        epilog=(
            "Exit status: 0 when the demo ran and the guarded run had no failed call, 1 when it had "
            "(or a run crashed), 2 for bad options or a missing/unreachable REDIS_URL."
        ),
    )
    p.add_argument("--requests", type=_positive_int, default=40, metavar="N", help="requests per run (default: 40)")
    p.add_argument(
        "--callers",
        type=_positive_int,
        default=10,
        metavar="N",
        help="concurrent callers sharing the requests, each making its calls one after another (default: 10)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=2,
        metavar="N",
        help="calls in flight the simulator allows (more get 429/1302); the guard uses the same limit (default: 2)",
    )
    p.add_argument(
        "--latency", type=_seconds, default=0.2, metavar="S", help="simulated seconds per answer (default: 0.2)"
    )
    p.add_argument(
        "--sleep",
        type=_seconds,
        default=1.2,
        metavar="S",
        help="the remedy's sleep after each successful call, as in the seed (default: 1.2)",
    )
    p.add_argument(
        "--max-tries", type=_positive_int, default=5, metavar="N", help="the guard's attempts per call (default: 5)"
    )
    p.add_argument(
        "--calls-per-minute",
        type=_positive_int,
        default=600,
        metavar="N",
        help="the guard's sliding-window limit per 60 s, on top of the concurrency limit (default: 600)",
    )
    p.add_argument("--model", default="glm-4", help="model name sent, and the guard's key glm:MODEL (default: glm-4)")
    p.add_argument(
        "--backend",
        choices=("local", "redis"),
        default="local",
        help="where the guard keeps its limit: this process, or Redis at REDIS_URL, shared (default: local)",
    )
    p.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes sharing the callers; with --backend redis they share one limit (default: 1)",
    )
    p.add_argument(
        "--timeout", type=_positive_seconds, default=10.0, metavar="S", help="HTTP timeout per request (default: 10)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


def _redis_url_or_error() -> str | None:
    """REDIS_URL, checked by a PING; ``None`` after printing why it cannot be used."""
    url = get_settings().redis_url
    if url is None:
        print(
            "glm-guard demo: --backend redis needs REDIS_URL, e.g. REDIS_URL=redis://:password@127.0.0.1:6379/0",
            file=sys.stderr,
        )
        return None
    try:
        import redis
    except ImportError:
        print("glm-guard demo: --backend redis needs redis-py: pip install 'glm-guard[redis]'", file=sys.stderr)
        return None
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        print(f"glm-guard demo: cannot reach REDIS_URL {mask_url(url)}: {error}", file=sys.stderr)
        return None
    finally:
        client.close()
    return url


def main_demo(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    ns = build_parser().parse_args(argv)
    backend = "local"
    if ns.backend == "redis":
        url = _redis_url_or_error()
        if url is None:
            return 2
        backend = url
    cfg = DemoConfig(
        requests=ns.requests,
        callers=max(ns.callers, ns.processes),
        concurrency=ns.concurrency,
        latency=ns.latency,
        sleep=ns.sleep,
        max_tries=ns.max_tries,
        calls_per_minute=ns.calls_per_minute,
        model=ns.model,
        backend=backend,
        processes=ns.processes,
        timeout=ns.timeout,
    )
    progress = _Progress(None if ns.quiet else sys.stderr, cfg.requests)
    if not ns.quiet:
        print(f"glm-guard demo: {_describe(cfg)}", file=sys.stderr, flush=True)
    try:
        results = run_demo(cfg, progress)
    except Exception as error:  # a crashed run is reported, not dumped as a traceback
        print(f"glm-guard demo: a run failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    figures = monitor_figures()
    if ns.json:
        print(to_json(cfg, results, figures), flush=True)
    else:
        print(render_table(cfg, results) + "\n\n" + render_monitor(figures, cfg.processes), flush=True)
    return 0 if results[-1].failed == 0 else 1
