"""Helpers shared by the benchmark modules: a loopback redis-server, statistics, counters.

Not a benchmark itself; ``benchmarks/run.py`` drives the ``bench_*.py`` modules, each of which
can also run alone (``python benchmarks/bench_overhead.py --out part.json``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"


# -- a redis-server of our own --------------------------------------------------------------


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    """The URL given on the command line, or a server of our own for the duration."""
    if given:
        yield given
        return
    from glm_guard.testing import RedisServer

    try:
        server = RedisServer().start()
    except (FileNotFoundError, RuntimeError) as error:
        sys.exit(str(error))
    with server:
        yield server.url


def server_commands(client: Any) -> int:
    """Commands the server has executed (INFO commandstats), those inside Lua scripts included.

    INFO and CONFIG themselves (the harness's own bookkeeping) are left out.
    """
    stats = client.info("commandstats")
    return sum(
        int(row["calls"]) for name, row in stats.items() if not name.startswith(("cmdstat_info", "cmdstat_config"))
    )


# -- counting round trips from the client side ----------------------------------------------

_trips = [0]
_trips_lock = threading.Lock()


def install_round_trip_counter() -> None:
    """Count every request redis-py writes to a socket (one per command, one per pipeline).

    Patches ``send_packed_command`` of the sync and asyncio connection classes, so every client
    in the process counts, whoever created it (glm_guard, limits, pyrate-limiter, our own).
    """
    import redis.asyncio.connection
    import redis.connection

    sync_cls = redis.connection.AbstractConnection
    if not getattr(sync_cls.send_packed_command, "_bench_counted", False):
        sync_original = sync_cls.send_packed_command

        def send_sync(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            with _trips_lock:
                _trips[0] += 1
            return sync_original(self, command, *args, **kwargs)

        send_sync._bench_counted = True  # type: ignore[attr-defined]
        sync_cls.send_packed_command = send_sync  # type: ignore[method-assign]

    async_cls = redis.asyncio.connection.AbstractConnection
    if not getattr(async_cls.send_packed_command, "_bench_counted", False):
        async_original = async_cls.send_packed_command

        async def send_async(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            with _trips_lock:
                _trips[0] += 1
            return await async_original(self, command, *args, **kwargs)

        send_async._bench_counted = True  # type: ignore[attr-defined]
        async_cls.send_packed_command = send_async  # type: ignore[method-assign]


def round_trips() -> int:
    return _trips[0]


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: always a value that was actually observed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and extremes of repeated measurements."""
    ordered = sorted(values)
    if not ordered:
        return {
            "median": float("nan"),
            "p25": float("nan"),
            "p75": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
        }
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "p25": quartiles[0],
        "p75": quartiles[2],
        "min": ordered[0],
        "max": ordered[-1],
    }


def rounded(value: Any, digits: int = 4) -> Any:
    """Round floats to ``digits`` significant figures (recursively), for JSON readable in a diff."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def max_in_window(starts: Sequence[float], period: float, *, ends_from: float = -math.inf) -> int:
    """The most starts in any window ``(t - period, t]`` whose end ``t`` is a start >= ``ends_from``."""
    ordered = sorted(starts)
    best = 0
    left = 0
    for right, t in enumerate(ordered):
        while ordered[left] <= t - period:
            left += 1
        if t >= ends_from:
            best = max(best, right - left + 1)
    return best


# -- glm_guard's statistics switch, when this version has one -------------------------------


def switch_stats(on: bool) -> str:
    """Turn glm_guard's stats recording on or off; returns how, for the results to record."""
    import glm_guard

    glm_guard.configure_stats(enabled=on)
    return f"glm_guard.configure_stats(enabled={on})"


# -- describing the run ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "glm_guard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' (glm_guard/ modified)' if dirty else ''}"


# -- running a part -------------------------------------------------------------------------


def part_main(name: str, measure: Callable[[Any], dict[str, Any]], extra: Callable[[Any], None] | None = None) -> None:
    """Command line of one benchmark module: ``--out FILE --redis-url URL --quick``."""
    import argparse

    parser = argparse.ArgumentParser(description=f"glm_guard benchmark part: {name}")
    parser.add_argument("--out", type=Path, help="write the JSON section here (default: print it)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--quick", action="store_true", help="short runs, for checking the harness")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    began = time.monotonic()
    section = measure(args)
    section["part_seconds"] = round(time.monotonic() - began, 1)
    text = json.dumps(rounded(section), indent=2, ensure_ascii=False)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# -- Markdown -------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one letter per column (``l`` or ``r``)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """A part's targets as a Markdown table: what it aims at, what was measured, met or not."""
    rows = [[t["target"], t["shown"], verdict(t["met"])] for t in targets]
    return table(["target", "measured", "verdict"], rows, "lll")


def verdict(met: bool | None) -> str:
    return "–" if met is None else ("**met**" if met else "**missed**")


def plt() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "font.size": 9})
    return pyplot
