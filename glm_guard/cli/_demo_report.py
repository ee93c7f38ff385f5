"""The demo's output: a progress bar on stderr, then the comparison table or JSON on stdout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO

from .._config import mask_url

if TYPE_CHECKING:
    from ._demo_workload import DemoConfig, RunResult

__all__ = ["Progress", "describe", "render_monitor", "render_table", "to_json"]


class Progress:
    """A one-line bar on stderr (redrawn on a terminal, one line per run otherwise)."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = bool(stream is not None and stream.isatty())
        self.label = ""
        self.done = 0
        self.shown = -1.0

    def start(self, label: str) -> None:
        self.label, self.done, self.shown = label, 0, -1.0
        self.draw(0)

    def tick(self) -> None:
        self.draw(self.done + 1)

    def draw(self, done: int) -> None:
        self.done = done
        if self.stream is None or not self.tty:
            return
        now = time.monotonic()
        if done < self.total and now - self.shown < 0.1:
            return
        self.shown = now
        width = 24
        filled = width * done // max(1, self.total)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r  {self.label:<18} [{bar}] {done}/{self.total}")
        self.stream.flush()

    def finish(self, wall: float) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.draw(self.done)
            self.stream.write(f"  {wall:.1f}s\n")
        else:
            self.stream.write(f"  {self.label}: {self.done}/{self.total} requests in {wall:.1f}s\n")
        self.stream.flush()


_ROWS: tuple[tuple[str, Callable[[RunResult], str]], ...] = (
    ("requests", lambda r: str(r.requests)),
    ("1302 errors (simulator)", lambda r: str(r.errors_1302)),
    ("failed calls", lambda r: str(r.failed)),
    ("success rate", lambda r: f"{r.success_rate:.1%}"),
    ("fallbacks served", lambda r: str(r.fallbacks)),
    ("throughput (answers/s)", lambda r: f"{r.throughput:.2f}"),
    ("p50 latency (s)", lambda r: f"{r.p50_latency:.3f}"),
    ("p99 latency (s)", lambda r: f"{r.p99_latency:.3f}"),
    ("peak in flight", lambda r: str(r.peak_in_flight)),
    ("wall time (s)", lambda r: f"{r.wall_seconds:.2f}"),
)


def describe(cfg: DemoConfig) -> str:
    where = "local backend" if cfg.backend == "local" else f"redis backend {mask_url(cfg.backend)}"
    procs = f"{cfg.processes} processes" if cfg.processes > 1 else "1 process"
    return (
        f"{cfg.requests} reasoning requests from {cfg.callers} concurrent callers ({procs}, {where}) "
        f"against a GLM simulator that allows {cfg.concurrency} in flight, {cfg.latency:g}s per answer"
    )


def render_table(cfg: DemoConfig, results: Sequence[RunResult]) -> str:
    """The comparison table, one column per run, in the spirit of the seed's 部署前 / 部署后."""
    label_width = max(len(name) for name, _ in _ROWS)
    widths = [max(len(r.label), 9) for r in results]
    lines = [f"glm-guard demo: {describe(cfg)}", ""]
    lines.append(" " * label_width + "".join(f"  {r.label:>{w}}" for r, w in zip(results, widths, strict=True)))
    for name, cell in _ROWS:
        cells = "".join(f"  {cell(r):>{w}}" for r, w in zip(results, widths, strict=True))
        lines.append(f"{name:<{label_width}}{cells}")
    guarded = results[-1]
    lines.append("")
    summary = (
        f"glm_guard: {guarded.failed} of {guarded.requests} calls failed, "
        f"{guarded.errors_1302} 1302s, {guarded.fallbacks} fallbacks"
    )
    others = ", ".join(f"{r.label} lost {r.failed} of {r.requests}" for r in results[:-1])
    lines.append(f"{summary} ({others})." if others else f"{summary}.")
    if cfg.processes > 1 and cfg.backend == "local":
        lines.append("note: the local backend limits each process on its own; use --backend redis to share one limit.")
    elif cfg.processes > 1:
        lines.append(
            f"shared limit held across {cfg.processes} processes: peak in flight {guarded.peak_in_flight} "
            f"(limit {cfg.concurrency})."
        )
    return "\n".join(lines)


def render_monitor(where: str, figures: Mapping[str, Any] | None) -> str:
    """What ``glm_guard.stats()`` (the monitor's numbers) recorded, and where it read them."""
    if figures is None:
        return f"monitor (glm_guard.stats()): {where}; use --backend redis to count them together."
    waits, latency = figures["waits"], figures["latency"]
    rate = figures["success_rate"]
    lines = [
        f"monitor (glm_guard.stats(), {where}):",
        f"  calls {figures['calls']}, successes {figures['successes']}, fallbacks {figures['fallbacks']}, "
        f"success rate {'-' if rate is None else f'{rate:.1%}'}",
        f"  provider attempts {figures['attempts']}, 1302 errors seen {figures['errors_1302']}, "
        f"retries {figures['retries']}",
        f"  waited for a permit: {waits['count']} calls, p50 {waits['p50'] or 0:.3f}s, p99 {waits['p99'] or 0:.3f}s",
        f"  call latency: p50 {latency['p50'] or 0:.3f}s, p99 {latency['p99'] or 0:.3f}s",
    ]
    return "\n".join(lines)


def to_json(cfg: DemoConfig, results: Sequence[RunResult], monitor: Mapping[str, Any] | None) -> str:
    config = asdict(cfg)
    config["backend"] = mask_url(cfg.backend)
    document = {"config": config, "runs": [asdict(r) for r in results], "monitor": monitor}
    return json.dumps(document, ensure_ascii=False, indent=2)
