"""``glm-guard demo``: one workload against the GLM simulator, unguarded, slept, and guarded.

The seed's "部署前 / 部署后" section promises fewer 1302s; this command shows it on a real HTTP
workload instead of asserting it.  This module holds the options and the exit status; the
workload is in ``_demo_workload``, the output in ``_demo_report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import TypeVar

from .._config import get_settings, mask_url
from . import _demo_stats
from ._arguments import positive_int, positive_seconds, seconds
from ._demo_peak import PeakConfig, peak_json, render_peak, run_peak
from ._demo_report import Progress, describe, render_monitor, render_table, to_json
from ._demo_workload import DemoConfig, run_demo

__all__ = ["add_arguments", "run"]

T = TypeVar("T")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Start a local GLM simulator and run one workload of concurrent reasoning requests three ways: "
        "unguarded, with the seed's sleep-after-each-call remedy, and through glm_guard's client "
        "(rate limit + retry + the seed's GLMRateLimitException fallback). Prints a comparison table: "
        "requests, 1302 errors, failed calls, success rate, fallbacks, throughput, p50/p99 latency. "
        "Progress goes to stderr. No network: everything stays on 127.0.0.1."
    )
    p.epilog = (
        "Exit status: 0 when the demo ran and the guarded run had no failed call, 1 when it had "
        "(or a run crashed), 2 for bad options or a missing/unreachable REDIS_URL."
    )
    groups = {  # title: (option, value parser, default, metavar, help) of each number
        "the workload": (
            ("--requests", positive_int, 40, "N", "requests per run"),
            (
                "--callers",
                positive_int,
                10,
                "N",
                "concurrent callers sharing the requests, each one call after another",
            ),
            (
                "--concurrency",
                positive_int,
                2,
                "N",
                "calls in flight the simulator allows; the guard uses the same limit",
            ),
            ("--latency", seconds, 0.2, "S", "simulated seconds per answer"),
            (
                "--processes",
                positive_int,
                1,
                "N",
                "worker processes sharing the callers (one limit with --backend redis)",
            ),
        ),
        "the seed's remedy and the guard": (
            ("--sleep", seconds, 1.2, "S", "the remedy's sleep after each successful call, as in the seed"),
            ("--max-tries", positive_int, 5, "N", "the guard's attempts per call"),
            (
                "--calls-per-minute",
                positive_int,
                600,
                "N",
                "the guard's limit per sliding 60 s, beside the concurrency",
            ),
            ("--timeout", positive_seconds, 10.0, "S", "HTTP timeout per request"),
        ),
        "the peak-hour scenario": (
            ("--high", positive_int, 4, "N", "the capacity before and after the peak"),
            ("--low", positive_int, 2, "N", "the capacity during the peak"),
            ("--phase", positive_seconds, 6.0, "S", "seconds per phase"),
        ),
    }
    for title, numbers in groups.items():
        group = p.add_argument_group(title)
        for option, parse, default, metavar, text in numbers:
            group.add_argument(
                option, type=parse, default=default, metavar=metavar, help=f"{text} (default: {default:g})"
            )
    p.add_argument("--model", default="glm-4", help="model name sent, and the guard's key glm:MODEL (default: glm-4)")
    p.add_argument(
        "--backend",
        choices=("local", "redis"),
        default="local",
        help="where the guard keeps its limit and its stats: this process, or Redis at REDIS_URL, shared "
        "(default: local)",
    )
    p.add_argument(
        "--scenario",
        choices=("seed", "peak-hour"),
        default="seed",
        help="seed: the workload three ways, as above; peak-hour: the simulator's capacity goes "
        "HIGH -> LOW -> HIGH while backlogged callers run through a fixed limit at HIGH, a fixed "
        "limit at LOW, and concurrency='auto' (default: seed)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _redis_url_or_error() -> str | None:
    """REDIS_URL, checked by a PING; ``None`` after printing why it cannot be used."""
    url = get_settings().redis_url
    if url is None:
        print(
            "glm-guard demo: --backend redis needs REDIS_URL, e.g. REDIS_URL=redis://:password@127.0.0.1:6379/0",
            file=sys.stderr,
        )
        return None
    try:
        import redis
    except ImportError:
        print("glm-guard demo: --backend redis needs redis-py: pip install 'glm-guard[redis]'", file=sys.stderr)
        return None
    from .._redis_url import redis_target
    from ..backends._redis._clients import open_sync

    try:
        client, close = open_sync(redis_target(url), 2.0)  # the backend's own client: Sentinel, Cluster too
    except redis.RedisError as error:  # a Cluster is asked for its nodes at once
        print(f"glm-guard demo: cannot reach REDIS_URL {mask_url(url)}: {error}", file=sys.stderr)
        return None
    try:
        client.ping()
    except redis.RedisError as error:
        print(f"glm-guard demo: cannot reach REDIS_URL {mask_url(url)}: {error}", file=sys.stderr)
        return None
    finally:
        close()
    return url


def _reporting_a_crash(run: Callable[[], T]) -> T | None:
    """``run()``; a crashed run is reported on stderr (``None``), not dumped as a traceback."""
    try:
        return run()
    except Exception as error:
        print(f"glm-guard demo: a run failed: {type(error).__name__}: {error}", file=sys.stderr)
        return None


def _run_peak(ns: argparse.Namespace) -> int:
    cfg = PeakConfig(ns.high, ns.low, ns.phase, ns.callers, ns.latency or 0.2, ns.max_tries, ns.model, ns.timeout)
    if cfg.low >= cfg.high:
        print("glm-guard demo: --low must be below --high for the peak-hour scenario", file=sys.stderr)
        return 2

    def announce(name: str) -> None:
        if not ns.quiet:
            print(f"glm-guard demo: peak hour, {name} ({3 * cfg.phase:g}s)", file=sys.stderr, flush=True)

    results = _reporting_a_crash(lambda: run_peak(cfg, announce))
    if results is None:
        return 1
    print(peak_json(cfg, results) if ns.json else render_peak(cfg, results), flush=True)
    return 0 if results[-1].failed == 0 else 1


def run(ns: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    if ns.scenario == "peak-hour":
        return _run_peak(ns)
    backend = "local"
    if ns.backend == "redis":
        url = _redis_url_or_error()
        if url is None:
            return 2
        backend = url
    # Every field is the option of the same name, but each process gets a caller at least, and
    # "redis" becomes the URL that answered.
    same_names = {field.name: getattr(ns, field.name) for field in dataclasses.fields(DemoConfig)}
    cfg = DemoConfig(**{**same_names, "callers": max(ns.callers, ns.processes), "backend": backend})
    progress = Progress(None if ns.quiet else sys.stderr, cfg.requests)
    if not ns.quiet:
        print(f"glm-guard demo: {describe(cfg)}", file=sys.stderr, flush=True)
    results = _reporting_a_crash(lambda: run_demo(cfg, progress))
    if results is None:
        return 1
    where, figures = _demo_stats.figures(cfg.backend, cfg.processes)
    if ns.json:
        print(to_json(cfg, results, figures), flush=True)
    else:
        print(render_table(cfg, results) + "\n\n" + render_monitor(where, figures), flush=True)
    return 0 if results[-1].failed == 0 else 1
