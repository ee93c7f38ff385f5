"""``glm-guard demo --scenario peak-hour``: the account's limit falls at peak hour and comes back.

GLM cuts an account's concurrency at peak hours without notice.  This runs the same
backlogged callers through the guarded client three times while the simulator's capacity
goes ``high -> low -> high``: with a fixed limit at the old capacity, a fixed limit at the low
one, and ``concurrency="auto"``.  The figures are counted at the simulator (1302s it sent) and
at the callers (failures, answers), and goodput is compared with what the capacity allowed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .._errors import GLMRateLimitException
from ._demo_workload import guarded_client

__all__ = ["PeakConfig", "PeakResult", "peak_json", "render_peak", "run_peak"]


@dataclass(frozen=True, slots=True)
class PeakConfig:
    high: int
    low: int
    phase: float  # seconds per phase: high, low, high again
    callers: int
    latency: float
    max_tries: int
    model: str
    timeout: float

    @property
    def phases(self) -> tuple[tuple[int, float], ...]:
        return ((self.high, self.phase), (self.low, self.phase), (self.high, self.phase))


@dataclass(frozen=True, slots=True)
class PeakResult:
    name: str
    requests: int  # at the simulator, retries included
    errors_1302: int
    failed: int  # calls whose caller got an error or the fallback
    answered: int
    goodput: float  # answers per second
    capacity_share: float  # answers against what the capacity allowed at the simulated latency


def _modes(cfg: PeakConfig) -> tuple[tuple[str, int | str], ...]:
    return (
        (f"fixed at {cfg.high} (old capacity)", cfg.high),
        (f"fixed at {cfg.low} (peak capacity)", cfg.low),
        ("auto (learned)", "auto"),
    )


async def _backlogged(cfg: PeakConfig, base_url: str, concurrency: int | str, until: float) -> tuple[int, int]:
    """Callers asking one question after another until ``until``; ``(answered, failed)``."""
    from ..backends._local import LocalBackend

    # Each mode starts from nothing learned, in a backend of its own.
    client = guarded_client(base_url, cfg, 1_000_000, concurrency, LocalBackend())
    answered = failed = 0

    async def caller(n: int) -> None:
        nonlocal answered, failed
        asked = 0
        while time.monotonic() < until:
            asked += 1
            try:
                await client.call_api([{"role": "user", "content": f"peak-hour question {n}.{asked}"}])
                answered += 1
            except GLMRateLimitException:  # the guard gave up: the seed would serve its busy message
                failed += 1
            except Exception:
                failed += 1

    try:
        await asyncio.gather(*(caller(n) for n in range(cfg.callers)))
    finally:
        await client.aclose()
    return answered, failed


def run_peak(cfg: PeakConfig, report: Callable[[str], None] | None = None) -> list[PeakResult]:
    """Run the three modes one after another against one simulator; ``report(name)`` before each."""
    from ..testing import run_simulator

    total = sum(seconds for _, seconds in cfg.phases)
    allowed = sum(capacity * seconds for capacity, seconds in cfg.phases) / cfg.latency
    results = []
    # The simulator follows the timeline itself; a drop never ends calls in flight.
    with run_simulator(capacity_timeline=cfg.phases, latency=cfg.latency, stream_chunk_delay=0) as sim:
        for name, concurrency in _modes(cfg):
            if report is not None:
                report(name)
            sim.reset_stats()
            sim.restart_timeline()
            answered, failed = asyncio.run(_backlogged(cfg, sim.base_url, concurrency, time.monotonic() + total))
            stats = sim.stats
            results.append(
                PeakResult(
                    name=name,
                    requests=stats.total_requests,
                    errors_1302=int(stats.rejected.get("1302", 0)),
                    failed=failed,
                    answered=answered,
                    goodput=answered / total,
                    capacity_share=answered / allowed,
                )
            )
    return results


def render_peak(cfg: PeakConfig, results: list[PeakResult]) -> str:
    timeline = " -> ".join(f"{capacity} for {seconds:g}s" for capacity, seconds in cfg.phases)
    lines = [
        f"Peak hour: the simulator's capacity goes {timeline}; {cfg.callers} callers always waiting, "
        f"{cfg.latency:g}s per answer, retries up to {cfg.max_tries} tries.",
        "",
        f"{'guard':<28}{'requests':>9}{'1302s':>7}{'failed':>8}{'answered':>10}{'answers/s':>11}{'of capacity':>13}",
    ]
    for r in results:
        lines.append(
            f"{r.name:<28}{r.requests:>9}{r.errors_1302:>7}{r.failed:>8}{r.answered:>10}"
            f"{r.goodput:>11.1f}{r.capacity_share:>12.0%}"
        )
    lines += [
        "",
        "1302s are counted at the simulator (retries hid most of them from the callers); 'of capacity'",
        "compares the answers with what the capacity allowed at this latency.",
    ]
    return "\n".join(lines)


def peak_json(cfg: PeakConfig, results: list[PeakResult]) -> str:
    return json.dumps({"scenario": "peak-hour", "config": asdict(cfg), "runs": [asdict(r) for r in results]}, indent=2)
