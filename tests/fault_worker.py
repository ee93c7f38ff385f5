"""One process of the fault matrix: ``python -m tests.fault_worker JSON``.

From ``begin`` (a ``time.monotonic`` moment: one clock for every process of the host) until
``end`` it runs ``tasks`` callers per outage policy against ``@rate_limited(calls, period,
concurrency=...)`` on one Redis backend, each call holding its permit for ``hold`` seconds,
and one probe no limit ever holds, so its time is the time spent waiting for Redis.  Prints
one JSON line: per policy, every call's (start, end) of its body or (moment it failed,
error); the probe's (moment, seconds).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import sys
import time
from typing import Any

POLICIES = ("local", "closed", "open")


def main() -> None:
    options: dict[str, Any] = json.loads(sys.argv[1])
    # A worker still running well past its end prints every thread's stack, so a hang names itself.
    faulthandler.dump_traceback_later(options["end"] - time.monotonic() + 20, exit=True)
    import glm_guard
    from glm_guard.backends import RedisBackend

    backend = RedisBackend(
        options["url"],
        socket_timeout=options["socket_timeout"],
        expected_processes=options["processes"],
        lease=options["lease"],
    )
    spans: dict[str, list[tuple[float, float]]] = {policy: [] for policy in POLICIES}
    errors: dict[str, list[tuple[float, str]]] = {policy: [] for policy in POLICIES}
    probes: list[tuple[float, float]] = []

    def guarded(policy: str) -> Any:
        @glm_guard.rate_limited(
            options["calls"],
            options["period"],
            concurrency=options["concurrency"],
            key=f"{options['key']}-{policy}",
            backend=backend,
            on_backend_error=policy,
        )
        async def call() -> None:
            began = time.monotonic()
            await asyncio.sleep(options["hold"])
            spans[policy].append((began, time.monotonic()))

        return call

    # "open": never held by a limit, with Redis or without, so its time is Redis's alone.
    @glm_guard.rate_limited(1_000_000, 1.0, key=f"{options['key']}-probe", backend=backend, on_backend_error="open")
    async def probe() -> None:
        return None

    async def caller(policy: str, call: Any) -> None:
        while time.monotonic() < options["end"]:
            try:
                await call()
            except Exception as error:  # when it failed, which is when Redis was found away
                errors[policy].append((time.monotonic(), f"{type(error).__name__}: {error}"))
                await asyncio.sleep(0.05)

    async def prober() -> None:
        while time.monotonic() < options["end"]:
            asked = time.monotonic()
            await probe()
            probes.append((asked, time.monotonic() - asked))
            await asyncio.sleep(0.05)

    async def name_the_hang() -> None:
        """Well past the end, print where each task still running waits (faulthandler shows threads only)."""
        await asyncio.sleep(options["end"] - time.monotonic() + 10)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                print(f"task {task.get_name()} waits in:", file=sys.stderr)
                awaited: Any = task.get_coro()
                while awaited is not None and hasattr(awaited, "cr_frame"):
                    frame = awaited.cr_frame
                    if frame is not None:
                        print(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}", file=sys.stderr)
                    awaited = awaited.cr_await
                print(f"  on {awaited!r}", file=sys.stderr)

    async def run() -> None:
        await asyncio.sleep(max(options["begin"] - time.monotonic(), 0.0))
        calls = {policy: guarded(policy) for policy in POLICIES}
        callers = [caller(policy, calls[policy]) for policy in POLICIES for _ in range(options["tasks"])]
        watchdog = asyncio.create_task(name_the_hang())
        await asyncio.gather(prober(), *callers)
        watchdog.cancel()

    asyncio.run(run())
    backend.close()
    print(json.dumps({"spans": spans, "errors": errors, "probes": probes}))


if __name__ == "__main__":
    main()
