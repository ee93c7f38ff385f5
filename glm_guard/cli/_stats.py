"""``glm-guard stats``: the fleet's recorded numbers as a table (or JSON) in the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .._errors import GLMGuardError
from ..monitoring import _views as recorded
from ..monitoring._recorder import RECORDER
from ._fleet import shared_source

__all__ = ["add_arguments", "run", "table"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the recorded numbers, per key and in total, from the Redis the workers share their stats "
        "through (GLM_GUARD_BACKEND when it names Redis, else REDIS_URL)."
    )
    parser.epilog = "Exit status: 0 when the numbers were printed, 2 for a bad option or a misconfigured Redis."
    parser.add_argument("--window-minutes", type=int, default=None, help="only the last N minutes (1 to 1440)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(options: argparse.Namespace) -> int:
    try:
        source = shared_source()
        recorder = RECORDER
        if options.window_minutes is None:
            data = recorded.render_totals(*recorded.read_totals(recorder, source), recorder.clock())
        else:
            minutes = recorded.check_window(options.window_minutes)
            name, per_key, error = recorded.read_window(recorder, minutes, source)
            data = recorded.render_window(name, per_key, error, recorder.clock(), minutes)
    except GLMGuardError as error:
        print(f"glm-guard stats: {error}", file=sys.stderr)
        return 2
    if source is None:
        print("glm-guard stats: no REDIS_URL set, so there is no shared data to read", file=sys.stderr)
    print(json.dumps(data, ensure_ascii=False, indent=2) if options.json else table(data))
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms" if seconds >= 0.001 else f"{seconds * 1000:.2f}ms"
    return f"{seconds:.2f}s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


Column = tuple[str, Callable[[dict[str, Any]], str]]
_COLUMNS: tuple[Column, ...] = (
    ("CALLS", lambda d: f"{d['calls']:,}"),
    ("SUCCESS", lambda d: _percent(d["success_rate"])),
    ("FALLBK", lambda d: f"{d['fallbacks']:,}"),
    ("FAILED", lambda d: f"{d['failures']:,}"),
    ("1302", lambda d: f"{d['errors_1302']:,}"),
    ("OTHER-RL", lambda d: f"{sum(d['errors']['rate_limit'].values()) - d['errors_1302']:,}"),
    ("PERM", lambda d: f"{sum(d['errors']['permanent'].values()):,}"),
    ("OTHER", lambda d: f"{d['errors']['other'] + d['errors']['guard_timeout']:,}"),
    ("RETRIES", lambda d: f"{d['retries']:,}"),
    ("WAITED", lambda d: f"{d['waits']['count']:,}"),
    ("WAIT-P95", lambda d: _duration(d["waits"]["p95"])),
    ("P50", lambda d: _duration(d["latency"]["p50"])),
    ("P95", lambda d: _duration(d["latency"]["p95"])),
    ("P99", lambda d: _duration(d["latency"]["p99"])),
    ("HIT%", lambda d: _percent(d["cache"]["hit_rate"])),
    ("TOKENS", lambda d: f"{d['tokens']['total']:,}"),
)


def _learned(field: str) -> Callable[[dict[str, Any]], str]:
    """A cell of the learned concurrency limit: ``-`` for a fixed limit, and in the total row."""
    return lambda block: "-" if block.get(field) is None else str(block[field])


def table(data: dict[str, Any]) -> str:
    """The stats (or the window stats) as an aligned text table, one row per key and a total."""
    columns = list(_COLUMNS)
    if any(block.get("learned_limit") is not None for block in data["keys"].values()):
        columns += [("LIMIT", _learned("learned_limit")), ("CUTS", _learned("limit_cuts"))]  # concurrency="auto"
    if "window_minutes" in data:
        columns.insert(5, ("1302/H", lambda d: f"{d['errors_1302_per_hour']:.1f}"))
        title = f"glm_guard stats, last {data['window_minutes']} min ({data['from']} to {data['to']})"
    else:
        title = f"glm_guard stats since first use, at {data['generated_at']}"
    title += f", source: {data['source']}"
    rows = [["KEY", *(name for name, _ in columns)]]
    for key, block in data["keys"].items():
        rows.append([key, *(cell(block) for _, cell in columns)])
    rows.append(["(total)", *(cell(data["total"]) for _, cell in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title]
    if "shared_error" in data:
        lines.append(f"(Redis unreachable: {data['shared_error']}; showing this process only)")
    for row in rows:
        cells = (cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        lines.append("  ".join(cells))
    for alert in data.get("alerts", ()):
        what = "1302 errors per hour" if alert["alert"] == "errors_1302" else "success rate"
        lines.append(f"ALERT {what} on {alert['key']}: {alert['value']:.4g} (threshold {alert['threshold']:.4g})")
    if not data["keys"]:
        lines.append("(nothing recorded yet)")
    return "\n".join(lines)
