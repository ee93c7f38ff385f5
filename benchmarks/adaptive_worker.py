"""One process of the adaptive benchmark: backlogged callers under one strategy.

Started by ``bench_adaptive.py`` as ``python adaptive_worker.py JOB_JSON``.  It opens its
HTTP connections, prints ``ready``, reads the start time (``time.monotonic()``, one clock for
every process on the machine) from stdin, runs its callers until the end, and prints one JSON
line: every attempt the provider saw (sent, answered, HTTP status), every logical call
(began, ended, succeeded) and, for the AIMD strategy, its limit every 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aimd_netflix import AIMDGate, AIMDLimit

MODEL = "glm-4"
RETRY_TRIES = 8


class GLMHTTPError(Exception):
    """The provider's error, status and body as text: what a home-made client raises."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status} {body}")
        self.status_code = status


def phase_at(timeline: list[list[float]], elapsed: float) -> int:
    """The capacity of the phase ``elapsed`` seconds into the run."""
    for capacity, seconds in timeline:
        if elapsed < seconds:
            return int(capacity)
        elapsed -= seconds
    return int(timeline[-1][0])


def build(job: dict[str, Any], post: Callable[[int], Awaitable[Any]], begin: list[float]) -> Any:
    """The strategy's guarded call: ``retry_on_1302`` outside whatever limits concurrency."""
    import glm_guard

    strategy = job["strategy"]
    backend = job["redis_url"]
    retry = glm_guard.retry_on_1302(max_tries=RETRY_TRIES)  # with the default retry budget, as users get it
    if strategy in ("fixed_high", "fixed_low"):
        return retry(glm_guard.rate_limited(concurrency=job["fixed"], key=job["key"], backend=backend)(post))
    if strategy == "auto":
        auto = glm_guard.AutoConcurrency(min=1, max=64)
        return retry(glm_guard.rate_limited(concurrency=auto, key=job["key"], backend=backend)(post))
    if strategy == "oracle":
        # No cooldown: the 1302s the oracle draws are the calls sent just before a drop, and
        # pausing every caller for them would make the ideal look worse than it is.
        async def through(send: Callable[[], Awaitable[Any]]) -> Any:
            return await send()

        by_capacity = {
            c: glm_guard.rate_limited(concurrency=c, key=job["key"], backend=backend, cooldown=0)(through)
            for c in sorted({int(c) for c, _ in job["timeline"]})
        }
        boundaries = list(itertools.accumulate(s for _, s in job["timeline"]))

        async def oracle(i: int) -> Any:
            # A caller still waiting for a slot when the phase ends waits again under the new
            # phase's limit; one already sent finishes under the old one.
            while True:
                elapsed = time.monotonic() - begin[0]
                started = asyncio.Event()

                async def sent(started: asyncio.Event = started) -> Any:
                    started.set()
                    return await post(i)

                limited = by_capacity[phase_at(job["timeline"], elapsed)]
                task = asyncio.ensure_future(limited(sent))
                left = next((b - elapsed for b in boundaries if b > elapsed), None)
                try:
                    done, _ = await asyncio.wait({task}, timeout=left)
                except asyncio.CancelledError:
                    task.cancel()
                    raise
                if done or started.is_set():
                    return await task
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        return retry(oracle)
    if strategy == "aimd":
        gate = AIMDGate(
            AIMDLimit(initial=1, min_limit=1, max_limit=64),
            lambda e: isinstance(e, GLMHTTPError) and e.status_code == 429,
        )

        async def aimd(i: int) -> Any:
            return await gate.call(lambda: post(i))

        guarded = retry(aimd)
        guarded.gate = gate  # type: ignore[attr-defined]
        return guarded
    raise SystemExit(f"unknown strategy {strategy!r}")


async def main(job: dict[str, Any]) -> dict[str, Any]:
    import httpx

    callers = job["callers"]
    attempts: list[tuple[float, float, int]] = []
    calls: list[tuple[float, float, bool]] = []
    limits: list[tuple[float, int]] = []
    failures: dict[str, int] = {}  # exception name -> calls that failed with it
    begin = [0.0]
    headers = {"Authorization": f"Bearer {job['api_key']}"}
    pool = httpx.Limits(max_connections=callers + 4, max_keepalive_connections=callers + 4)
    async with httpx.AsyncClient(timeout=30.0, limits=pool, headers=headers) as http:

        async def post(i: int) -> Any:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"推理问题 {i}"}], "max_tokens": 16}
            sent = time.monotonic()
            response = await http.post(job["chat_url"], json=body)
            attempts.append((sent, time.monotonic(), response.status_code))
            if response.status_code >= 400:
                raise GLMHTTPError(response.status_code, response.text)
            return response.json()

        call = build(job, post, begin)
        # Open connections before the clock starts (a model the simulator refuses: no slot taken).
        with contextlib.suppress(httpx.HTTPError):
            await asyncio.gather(*(http.get(job["chat_url"]) for _ in range(callers)))
        print("ready", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        begin[0] = float(line)
        end = begin[0] + job["seconds"]

        async def caller(c: int) -> None:
            i = c
            while True:
                began = time.monotonic()
                try:
                    await call(i)
                    ok = True
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    ok = False
                    failures[type(error).__name__] = failures.get(type(error).__name__, 0) + 1
                calls.append((began, time.monotonic(), ok))
                i += callers

        async def sample_limit(gate: AIMDGate) -> None:
            while True:
                limits.append((time.monotonic(), gate.limit.limit))
                await asyncio.sleep(0.1)

        await asyncio.sleep(max(begin[0] - time.monotonic(), 0.0))
        tasks = [asyncio.ensure_future(caller(c + job["index"] * 1000)) for c in range(callers)]
        gate = getattr(call, "gate", None)
        if gate is not None:
            tasks.append(asyncio.ensure_future(sample_limit(gate)))
        await asyncio.sleep(max(end - time.monotonic(), 0.0))
        for t in tasks:
            t.cancel()
        # A caller that ignores its cancellation is counted, not waited for.
        _, stuck = await asyncio.wait(tasks, timeout=5.0)
    return {"attempts": attempts, "calls": calls, "limits": limits, "stuck": len(stuck), "failures": failures}


if __name__ == "__main__":
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await main(json.loads(sys.argv[1])))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run())
    print(json.dumps(result), flush=True)
    os._exit(0)  # stuck callers (counted above) must not keep the process alive
