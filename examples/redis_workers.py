"""Several worker processes, one GLM account: the Redis backend makes them share one limit.

Each process alone stays within ``GLM_API_MAX_CONCURRENCY=2``, yet three of them would put six
calls in flight and get 1302s.  With ``GLM_GUARD_BACKEND=redis`` every process's
``get_llm_client()`` takes its permits from the same Redis, so at most two are in flight in
all.  Needs ``REDIS_URL``; starts a local GLM simulator unless ``GLM_API_BASE_URL`` is set::

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/redis_workers.py
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys

PROCESSES = 3
CALLS_PER_PROCESS = 6


def worker(index: int) -> tuple[int, int]:
    """One process: concurrent calls through the process's own get_llm_client()."""
    from glm_guard import GLMRateLimitException, get_llm_client

    async def run() -> tuple[int, int]:
        client = get_llm_client()

        async def one(i: int) -> bool:
            try:
                await client.call_api(messages=[{"role": "user", "content": f"worker {index} 问题 {i}"}])
            except GLMRateLimitException:
                return False
            return True

        answered = await asyncio.gather(*(one(i) for i in range(CALLS_PER_PROCESS)))
        return os.getpid(), sum(answered)

    return asyncio.run(run())


def main() -> int:
    if not os.environ.get("REDIS_URL"):
        print("set REDIS_URL, e.g. REDIS_URL=redis://127.0.0.1:6379/0", file=sys.stderr)
        return 2
    from glm_guard.testing import GLMSimulator

    os.environ.update(GLM_GUARD_BACKEND="redis", GLM_API_MAX_CONCURRENCY="2")
    sim = None
    if not os.environ.get("GLM_API_BASE_URL"):
        sim = GLMSimulator(concurrency=2, latency=0.1).start()
        os.environ.update(GLM_API_BASE_URL=sim.base_url, GLM_API_KEY="example-key")
    try:
        # spawn: each worker is a fresh interpreter reading the environment set above
        with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
            results = pool.map(worker, range(PROCESSES))
        answered = sum(n for _, n in results)
        print(f"workers: {len(results)} processes, {answered} of {PROCESSES * CALLS_PER_PROCESS} calls answered")
        if sim is not None:
            stats = sim.stats
            print(f"simulator: {stats.rejected.get('1302', 0)} 1302s, peak in flight {stats.peak_in_flight} (limit 2)")
    finally:
        if sim is not None:
            sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
