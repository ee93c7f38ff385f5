"""The demo's workload: the same requests run unguarded, with the seed's sleep, and guarded.

The same requests run three ways against the GLM simulator: with no protection, with the
seed's temporary remedy (``asyncio.sleep(1.2)`` after each call), and through
:class:`~glm_guard.AsyncLLMClient` with the seed's ``except GLMRateLimitException`` fallback.
The figures come from the callers' own outcomes and latencies plus the simulator's counters.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import GLMRateLimitException
from ._demo_report import Progress

if TYPE_CHECKING:
    from .._client import AsyncLLMClient
    from ..backends import Backend

__all__ = ["MODES", "DemoConfig", "RunResult", "guarded_client", "label", "run_demo"]

DEMO_KEY = "glm-guard-demo-key"
MODES = ("unguarded", "sleep", "guarded")


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


class ClientOptions(Protocol):
    """What every scenario of the demo sets on its guarded client the same way."""

    @property
    def model(self) -> str: ...
    @property
    def max_tries(self) -> int: ...
    @property
    def timeout(self) -> float: ...


def guarded_client(
    base_url: str, options: ClientOptions, calls_per_minute: int, concurrency: int | str, backend: str | Backend
) -> AsyncLLMClient:
    """The seed's client on the simulator, with the scenario's limits."""
    from .._client import AsyncLLMClient

    return AsyncLLMClient(
        api_key=DEMO_KEY,
        base_url=base_url,
        model=options.model,
        max_tries=options.max_tries,
        timeout=options.timeout,
        calls_per_minute=calls_per_minute,
        concurrency=concurrency,
        backend=backend,
    )


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


def label(mode: str, cfg: DemoConfig) -> str:
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

    from .._client import _parse

    outcomes: list[Outcome] = []
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}
    async with httpx.AsyncClient(timeout=cfg.timeout, headers=headers) as http:
        client = None
        if mode == "guarded":
            client = guarded_client(base_url, cfg, cfg.calls_per_minute, cfg.concurrency, cfg.backend)

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
                    outcome = "fallback"  # the seed's except-branch: serve its busy message
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

    from .. import _client  # noqa: F401

    _start_barrier.wait(30)
    return os.getpid()


# -- the parent: simulator, runs, figures ------------------------------------------------


def _queues(cfg: DemoConfig) -> list[list[int]]:
    return [list(range(c, cfg.requests, cfg.callers)) for c in range(cfg.callers)]


def percentile(values: Sequence[float], q: float) -> float:
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
        label=label(mode, cfg),
        requests=len(outcomes),
        errors_1302=int(stats.rejected.get("1302", 0)),
        failed=sum(1 for kind, _ in outcomes if kind == "failed"),
        fallbacks=sum(1 for kind, _ in outcomes if kind == "fallback"),
        answered=answered,
        success_rate=answered / len(outcomes) if outcomes else 0.0,
        throughput=answered / wall if wall > 0 else 0.0,
        p50_latency=percentile(latencies, 50),
        p99_latency=percentile(latencies, 99),
        peak_in_flight=int(stats.peak_in_flight),
        wall_seconds=wall,
    )


def run_demo(cfg: DemoConfig, progress: Progress) -> list[RunResult]:
    """Start the simulator and run the workload the three ways, one after another."""
    from ..testing import run_simulator

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
                progress.start(label(mode, cfg))
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
