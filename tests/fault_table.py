"""Render the fault matrix's figures as the table in docs/failure_modes.md.

FAULT_TABLE_FILE=/tmp/faults.jsonl bash scripts/test.sh tests/test_fault_matrix.py
python -m tests.fault_table /tmp/faults.jsonl
"""

from __future__ import annotations

import json
import sys


def cell(policy: dict[str, object]) -> str:
    text = f"{policy['max_per_window']}/s, {policy['max_in_flight']} in flight"
    if policy["failures"]:
        text += f"; {policy['failures']} failed ({policy['failed_from']:.1f}–{policy['failed_until']:.1f} s)"
    return text + f"; {policy['last_2s']} in the last 2 s"


def main() -> None:
    print("| fault | `local` | `closed` | `open` | slowest wait for Redis |")
    print("|---|---|---|---|---|")
    with open(sys.argv[1], encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            policies = row["policies"]
            cells = " | ".join(cell(policies[name]) for name in ("local", "closed", "open"))
            print(f"| {row['fault']} | {cells} | {row['slowest_redis_wait']:.2f} s |")


if __name__ == "__main__":
    main()
