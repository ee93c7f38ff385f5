"""A worker for the cross-process retry-budget tests: ``python -m tests.retry_budget_worker JSON``.

Makes ``calls`` logical calls of a function that always answers 1302, through
``retry_on_1302`` and ``rate_limited`` on the shared Redis, starting at ``start`` (a
``time.monotonic`` moment, one clock for every process of the host).  Prints one JSON line:
the calls, the attempts, and how many calls the budget cut short.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    options = json.loads(sys.argv[1])
    import glm_guard

    from .helpers import SEED_1302, ErrorWithText

    attempts = 0
    policy = glm_guard.RetryBudgetPolicy(**options["policy"])

    @glm_guard.retry_on_1302(5, base_delay=0.0, max_delay=0.0, jitter=False, retry_budget=policy)
    @glm_guard.rate_limited(100_000, 1.0, key=options["key"], backend=options["url"], cooldown=0)
    def call() -> None:
        nonlocal attempts
        attempts += 1
        raise ErrorWithText(SEED_1302)

    time.sleep(max(0.0, options["start"] - time.monotonic()))
    cut = 0
    for _ in range(options["calls"]):
        try:
            call()
        except glm_guard.RetryBudgetExhausted:
            cut += 1
        except glm_guard.GLMRateLimitException:
            pass
    print(json.dumps({"calls": options["calls"], "attempts": attempts, "cut": cut}))


if __name__ == "__main__":
    main()
