"""A worker process for the cross-process stats tests: ``python -m tests.stats_worker MODE JSON``.

Its environment names the Redis (``GLM_GUARD_BACKEND=redis``, ``REDIS_URL``), as a deployed
worker's would; it calls the GLM simulator through a guarded function and prints one JSON line.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from typing import Any

_pooled: Callable[[int], int] | None = None  # set before the pool forks, so its workers have it


def pooled_call(i: int) -> int:
    assert _pooled is not None
    return _pooled(i)


def run_pool(options: dict[str, Any]) -> None:
    """A ``multiprocessing.Pool`` in a ``with`` block: its workers end by ``terminate()``."""
    global _pooled
    import glm_guard

    @glm_guard.rate_limited(1000, 1.0, key="mp-pool")
    def work(i: int) -> int:
        return i

    _pooled = work
    with multiprocessing.get_context("fork").Pool(options["workers"]) as pool:
        total = sum(pool.map(pooled_call, range(options["calls"]), chunksize=1))
    print(json.dumps({"total": total}), flush=True)


def main() -> None:
    mode, options = sys.argv[1], json.loads(sys.argv[2])
    if mode == "pool":
        run_pool(options)
        return
    import httpx

    import glm_guard

    client = httpx.Client(base_url=options["base_url"], headers={"Authorization": "Bearer worker-key-1"}, timeout=10)

    @glm_guard.retry_on_1302(max_tries=20, base_delay=0.01, max_delay=0.05)
    @glm_guard.rate_limited(1000, 1.0, key="mp-glm-4", cooldown=0)
    def ask(i: int) -> dict[str, Any]:
        response = client.post(
            "/chat/completions", json={"model": "glm-4", "messages": [{"role": "user", "content": f"q{i}"}]}
        )
        response.raise_for_status()
        return dict(response.json())

    tokens = 0
    for i in range(options["calls"]):
        tokens += ask(i)["usage"]["total_tokens"]
    if mode == "exit":
        print(json.dumps({"tokens": tokens}), flush=True)
    elif mode == "linger":  # report, then wait to be killed: only the background flush has run
        time.sleep(options["linger"])
        print(json.dumps({"tokens": tokens}), flush=True)
        time.sleep(60)


if __name__ == "__main__":
    main()
