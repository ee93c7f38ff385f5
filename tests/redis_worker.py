"""A worker process for the cross-process Redis tests: ``python -m tests.redis_worker MODE JSON``.

Prints one JSON line with what it observed.  Start times use ``time.monotonic``, which on
Linux is one clock for every process of the host, so the parent can merge them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


def main() -> None:
    mode, options = sys.argv[1], json.loads(sys.argv[2])
    if options.get("skew_seconds"):
        real = time.time
        time.time = lambda: real() + options["skew_seconds"]  # a host whose wall clock is off
    import glm_guard

    url = options["url"]
    if mode == "rate":
        starts: list[float] = []

        burst = tuple(options["burst"]) if options.get("burst") else None

        @glm_guard.rate_limited(options["calls"], options["period"], key=options["key"], backend=url, burst=burst)
        async def call() -> None:
            starts.append(time.monotonic())

        async def run() -> None:
            stop = time.monotonic() + options["seconds"]

            async def task() -> None:
                while time.monotonic() < stop:
                    await call()

            await asyncio.gather(*(task() for _ in range(options["tasks"])))

        asyncio.run(run())
        print(json.dumps({"starts": starts}))
    elif mode == "tokens":
        import random

        spent: list[tuple[float, int]] = []

        @glm_guard.rate_limited(
            tokens=options["tokens"], period=options["period"], key=options["key"], backend=url, estimate=lambda n: n
        )
        async def spend(size: int) -> dict[str, Any]:
            spent.append((time.monotonic(), size))
            await asyncio.sleep(random.uniform(0.005, 0.05))
            return {"usage": {"total_tokens": size}}  # as much as it reserved: the guarantee's edge

        async def run_tokens() -> None:
            stop = time.monotonic() + options["seconds"]

            async def task() -> None:
                while time.monotonic() < stop:
                    await spend(random.randint(10, options["largest"]))

            await asyncio.gather(*(task() for _ in range(options["tasks"])))

        asyncio.run(run_tokens())
        print(json.dumps({"spent": spent}))
    elif mode == "concurrency":
        spans: list[tuple[float, float]] = []

        @glm_guard.rate_limited(concurrency=options["concurrency"], key=options["key"], backend=url)
        async def hold() -> None:
            began = time.monotonic()
            await asyncio.sleep(options["hold"])
            spans.append((began, time.monotonic()))

        async def run_all() -> None:
            await asyncio.gather(*(hold() for _ in range(options["calls"])))

        asyncio.run(run_all())
        print(json.dumps({"spans": spans}))
    elif mode == "hold_forever":
        from glm_guard.backends._redis import RedisBackend

        backend = RedisBackend(url, lease=options["lease"])

        @glm_guard.rate_limited(concurrency=1, key=options["key"], backend=backend)
        def hold() -> None:
            print(json.dumps({"holding": True}), flush=True)
            time.sleep(60)

        hold()
    elif mode == "fail_1302":

        @glm_guard.rate_limited(100, 1.0, key=options["key"], backend=url, cooldown=options["cooldown"])
        def call() -> None:
            raise RuntimeError('429 {"error":{"code":"1302","message":"busy"}}')

        try:
            call()
        except RuntimeError:
            print(json.dumps({"failed_at": time.monotonic()}))
    elif mode == "learn_cut":
        # Every task is admitted under the learned limit, waits until all processes' tasks
        # are in flight, then all get a 1302 in the same moment.
        import redis

        counter = redis.Redis.from_url(url)
        bounds = glm_guard.AutoConcurrency(min=1, max=64, initial=64)

        @glm_guard.rate_limited(concurrency=bounds, key=options["key"], backend=url)
        async def call() -> None:
            counter.incr(options["barrier"])
            deadline = time.monotonic() + 20
            # The others are other processes: the barrier is polled in Redis.
            while int(counter.get(options["barrier"]) or 0) < options["everyone"]:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            raise RuntimeError('429 {"error":{"code":"1302","message":"busy"}}')

        async def run_tasks() -> int:
            outcomes = await asyncio.gather(*(call() for _ in range(options["tasks"])), return_exceptions=True)
            return sum(isinstance(outcome, RuntimeError) for outcome in outcomes)

        print(json.dumps({"limited": asyncio.run(run_tasks())}))
    elif mode == "call_once":

        @glm_guard.rate_limited(100, 1.0, key=options["key"], backend=url)
        def call() -> None:
            return None

        call()
        print(json.dumps({"called_at": time.monotonic()}))
    elif mode == "soak":
        import resource

        import httpx

        outcomes: dict[str, int] = {}

        @glm_guard.rate_limited(concurrency=options["concurrency"], key="soak-glm-4", backend=url, max_wait=30)
        async def ask(client: httpx.AsyncClient, i: int) -> dict[str, Any]:
            response = await client.post(
                "/chat/completions",
                json={"model": "glm-4", "messages": [{"role": "user", "content": f"q{i}"}]},
            )
            response.raise_for_status()
            return dict(response.json())

        async def run_soak() -> None:
            headers = {"Authorization": "Bearer soak-key-0001"}
            async with httpx.AsyncClient(base_url=options["base_url"], headers=headers, timeout=30) as client:

                async def task(t: int) -> None:
                    for i in range(options["calls"]):
                        try:
                            answer = await ask(client, t * 1000 + i)
                            kind = "ok" if answer.get("choices") else "bad"
                        except glm_guard.RateLimitTimeout:
                            kind = "RateLimitTimeout"
                        except httpx.HTTPStatusError as error:
                            kind = f"http_{error.response.status_code}"
                        outcomes[kind] = outcomes.get(kind, 0) + 1

                await asyncio.gather(*(task(t) for t in range(options["tasks"])))

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        asyncio.run(run_soak())
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"outcomes": outcomes, "rss_kb": [rss_before, rss_after]}))
    elif mode == "cache":
        import redis

        counter = redis.Redis.from_url(url)

        @glm_guard.cached_response(ttl=60, key="shared-answers", backend=url)
        def answer(question: str) -> dict[str, Any]:
            counter.incr("test:body-runs")
            time.sleep(options.get("work", 0))
            return {"answer": question.upper(), "pid": __import__("os").getpid()}

        print(json.dumps(answer(options["question"])))
        counter.close()


if __name__ == "__main__":
    main()
