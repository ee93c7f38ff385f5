"""A longer soak of the 16 x 32 workload: ``python benchmarks/soak.py --minutes 10``.

Starts its own redis-server and GLM simulator on loopback, runs rounds of 16 worker
processes x 32 tasks sharing one concurrency limit through Redis until the time is up, and
reports per round: calls, outcomes, 1302s the simulator sent, peak in flight, the workers'
peak RSS and the number of Redis keys.  Exits non-zero if a call was lost, a 1302 got
through, or the key count grew.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="how long to keep running rounds")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--calls", type=int, default=10, help="calls per task per round")
    parser.add_argument("--limit", type=int, default=4, help="the simulator's (and the guard's) concurrency")
    args = parser.parse_args()

    import redis

    from glm_guard.testing import RedisServer, run_simulator

    failed = False
    with RedisServer() as server, run_simulator(concurrency=args.limit, latency=0.01) as simulator:
        url = server.url
        client = redis.Redis.from_url(url)
        try:
            stop = time.monotonic() + args.minutes * 60
            round_number = 0
            while time.monotonic() < stop:
                round_number += 1
                options = {
                    "url": url,
                    "base_url": simulator.base_url,
                    "concurrency": args.limit,
                    "tasks": args.tasks,
                    "calls": args.calls,
                }
                workers = [
                    subprocess.Popen(
                        [sys.executable, "-m", "tests.redis_worker", "soak", json.dumps(options)],
                        cwd=ROOT,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    for _ in range(args.processes)
                ]
                reports = [json.loads(w.communicate(timeout=600)[0].strip().splitlines()[-1]) for w in workers]
                outcomes: dict[str, int] = {}
                for report in reports:
                    for kind, count in report["outcomes"].items():
                        outcomes[kind] = outcomes.get(kind, 0) + count
                expected = args.processes * args.tasks * args.calls
                rss = max(r["rss_kb"][1] for r in reports)
                keys = len(client.keys("*"))
                stats = simulator.stats
                print(
                    f"round {round_number}: calls {sum(outcomes.values())}/{expected} {outcomes} "
                    f"1302s {stats.rejected.get('1302', 0)} peak {stats.peak_in_flight} "
                    f"worker peak RSS {rss} KiB, redis keys {keys}",
                    flush=True,
                )
                if sum(outcomes.values()) != expected or stats.rejected.get("1302", 0) or keys > 5:
                    failed = True
        finally:
            client.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
