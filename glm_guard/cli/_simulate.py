"""``glm-guard simulate``: run the GLM simulator from the command line until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..testing import GLM_ERRORS, CapacityTimeline, GLMSimulator, LogNormalLatency, SimulatorConfig
from ..testing._account import OVERLOAD_CODES
from ..testing._catalogue import QUOTA_CODES
from ..testing._config import STREAM_FAIL_REASONS, Latency

__all__ = ["add_arguments", "run"]


# argparse prefixes these messages with "argument --option:", so they stay generic.


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def _rate(text: str) -> tuple[int, float]:
    calls, sep, period = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(calls), float(period)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CALLS/PERIOD_SECONDS, e.g. 10/60; got {text!r}") from None


def _latency_ms(text: str) -> tuple[float, float]:
    mean, _, jitter = text.partition(",")
    try:
        return float(mean) / 1000.0, float(jitter or 0) / 1000.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MEAN[,JITTER] in milliseconds; got {text!r}") from None


def _number(
    convert: Callable[[str], Any], low: float, *, inclusive: bool, expected: str, high: float = math.inf
) -> Callable[[str], Any]:
    """A parser of one finite number above ``low`` (or equal, with ``inclusive``), at most ``high``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
            if not math.isfinite(value) or value < low or (value == low and not inclusive) or value > high:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        return value

    return parse


def _timeline(text: str) -> list[tuple[int | None, float]]:
    """``4:6,2:6,4:6`` -> ``[(4, 6.0), (2, 6.0), (4, 6.0)]``; 0 means unlimited."""
    phases: list[tuple[int | None, float]] = []
    try:
        for part in text.split(","):
            n, sep, seconds = part.strip().partition(":")
            if not sep:
                raise ValueError
            count = int(n)
            phases.append((None if count == 0 else count, float(seconds)))
        CapacityTimeline(phases)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N:SECONDS[,N:SECONDS...] with N >= 0 (0 = unlimited) and SECONDS > 0, e.g. 4:6,2:6; got {text!r}"
        ) from None
    return phases


def _latency(text: str) -> Latency:
    """``0.2`` (fixed s), ``uniform:LO:HI`` or ``lognormal:MEDIAN:SIGMA[:PARETO_SHARE[:PARETO_ALPHA]]``."""
    kind, _, rest = text.partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind == "lognormal" and 2 <= len(args) <= 4:
            return LogNormalLatency(*(float(a) for a in args))
        if kind == "uniform" and len(args) == 2:
            lo, hi = (float(a) for a in args)
            if not 0 <= lo <= hi:
                raise ValueError
            return ((lo + hi) / 2, (hi - lo) / 2)
        if not args:
            value = float(kind)
            if not value >= 0:
                raise ValueError
            return value
        raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected SECONDS, uniform:LO:HI or lognormal:MEDIAN:SIGMA[:PARETO_SHARE[:PARETO_ALPHA]] "
            f"(seconds, e.g. lognormal:0.2:0.6); got {text!r}"
        ) from None


def _named(convert: Callable[[str], Any], expected: str) -> Callable[[str], tuple[str, Any]]:
    """A parser of ``NAME=VALUE`` whose value ``convert`` reads; ``expected`` shows the form."""

    def parse(text: str) -> tuple[str, Any]:
        name, value = _pair(text)
        try:
            return name, convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None

    return parse


_fault = _named(float, "CODE=PROBABILITY")
_name_int = _named(int, "NAME=INTEGER")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve a local simulation of Zhipu GLM's OpenAI-compatible chat API "
        "(POST /api/paas/v4/chat/completions) with GLM's concurrency limit and error codes. "
        "Prints the base URL on the first line of stdout, then runs until SIGINT/SIGTERM."
    )
    codes = ", ".join(f"{c} (HTTP {s})" for c, (s, _) in sorted(GLM_ERRORS.items(), key=lambda kv: int(kv[0])))
    p.epilog = f"Known error codes: {codes}."
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=8001,
        help="port to bind, 0 for any free port (default: %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        metavar="N",
        help="requests in flight allowed per (api key, model); more get 429/1302; 0 = unlimited (default: %(default)s)",
    )
    repeatable = (  # (option, value parser, metavar, help): each may be given many times
        ("--model-concurrency", _name_int, "MODEL=N", "per-model concurrency override"),
        ("--fault", _fault, "CODE=PROB", "answer CODE with probability PROB, e.g. 1305=0.1; probabilities sum to <= 1"),
        ("--model-fault", _pair, "MODEL=CODE", "answer every request for MODEL with CODE"),
        ("--status", _name_int, "CODE=HTTP", "override the HTTP status of a code, e.g. 1305=503"),
        ("--api-key", str, "K", "accepted API key; other keys get 401/1002 (without it any non-empty key is accepted)"),
        ("--model", str, "M", "accepted model (others get 1211)"),
    )
    for option, parse, metavar, text in repeatable:
        p.add_argument(option, type=parse, action="append", default=[], metavar=metavar, help=f"{text}; repeatable")
    p.add_argument(
        "--rate",
        type=_rate,
        metavar="CALLS/PERIOD",
        help="also allow at most CALLS admitted starts per PERIOD seconds per (key, model), e.g. 10/60",
    )
    p.add_argument(
        "--retry-after",
        type=float,
        metavar="S",
        help="send 'Retry-After: S' on 1302 answers (real GLM sends none; default: none)",
    )
    p.add_argument(
        "--latency-ms",
        type=_latency_ms,
        metavar="MEAN[,JITTER]",
        help="time each admitted request holds its slot, uniform in MEAN±JITTER ms (default: 20)",
    )
    p.add_argument(
        "--latency",
        type=_latency,
        metavar="SPEC",
        help="latency in seconds instead of --latency-ms: S, uniform:LO:HI, or heavy-tailed "
        "lognormal:MEDIAN:SIGMA[:PARETO_SHARE[:PARETO_ALPHA]] (drawn from the --seed RNG)",
    )
    p.add_argument(
        "--latency-cap",
        type=_number(float, 0, inclusive=False, expected="seconds > 0"),
        metavar="S",
        help="upper bound on a lognormal --latency draw",
    )
    p.add_argument(
        "--capacity-timeline",
        type=_timeline,
        metavar="N:S,...",
        help="concurrency per (key, model) that changes over time: N for S seconds, then the next phase; "
        "the last phase holds (see --capacity-cycle); 0 = unlimited; replaces --concurrency",
    )
    p.add_argument(
        "--capacity-cycle", action="store_true", help="repeat --capacity-timeline from its first phase forever"
    )
    p.add_argument(
        "--quota-after",
        type=_number(int, 0, inclusive=True, expected="an integer >= 0"),
        metavar="N",
        help="each key's quota window closes after N admitted calls (0: at once) and answers --quota-code",
    )
    p.add_argument(
        "--quota-code",
        choices=sorted(QUOTA_CODES),
        default="1308",
        help="code of an exhausted quota: 1308 five-hour, 1310 weekly/monthly, 1304 daily (default: %(default)s)",
    )
    p.add_argument(
        "--quota-reset",
        type=_number(float, 0, inclusive=False, expected="seconds > 0"),
        default=3600.0,
        metavar="S",
        help="seconds until a closed quota window reopens; the message names that moment in UTC+8 "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--quota-next-flush-time",
        action="store_true",
        help="also send the reset as next_flush_time (epoch milliseconds) in the error object",
    )
    p.add_argument("--arrears", action="store_true", help="every key is in arrears: answer 429/1113")
    p.add_argument(
        "--overload-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="MODEL is overloaded: answers --overload-code while other models answer; repeatable",
    )
    p.add_argument(
        "--overload-code",
        choices=sorted(OVERLOAD_CODES),
        default="1305",
        help="code of an overloaded model; 1312 names --overload-switch-to (default: %(default)s)",
    )
    p.add_argument(
        "--overload-fraction",
        type=_number(float, 0, inclusive=False, high=1.0, expected="a fraction in (0, 1]"),
        default=1.0,
        metavar="F",
        help="share of an overloaded model's requests refused (default: %(default)s)",
    )
    p.add_argument(
        "--overload-for",
        type=_number(float, 0, inclusive=False, expected="seconds > 0"),
        metavar="S",
        help="the overload ends S seconds after start (default: never)",
    )
    p.add_argument(
        "--overload-switch-to",
        default="glm-4-flash",
        metavar="MODEL",
        help="the model a 1312 message suggests (default: %(default)s)",
    )
    p.add_argument(
        "--stream-fail-after",
        type=int,
        metavar="K",
        help="end streams after K content chunks with finish_reason=network_error (see --stream-fail-reason)",
    )
    p.add_argument(
        "--stream-fail-reason",
        choices=sorted(STREAM_FAIL_REASONS),
        default="network_error",
        help="how a failing stream ends; 'disconnect' drops the socket without [DONE] (default: %(default)s)",
    )
    p.add_argument(
        "--stream-fail-probability",
        type=float,
        default=1.0,
        metavar="P",
        help="chance a stream fails when --stream-fail-after is set (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, help="RNG seed for faults and jitter, for reproducible runs")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log decisions to stderr (-vv: every request)",
    )


def _latency_from(ns: argparse.Namespace) -> Latency:
    parser: argparse.ArgumentParser = ns.parser
    if ns.latency is not None and ns.latency_ms is not None:
        parser.error("argument --latency: not allowed with argument --latency-ms")
    latency: Latency = ns.latency if ns.latency is not None else ns.latency_ms or (0.02, 0.0)
    if ns.latency_cap is not None:
        if not isinstance(latency, LogNormalLatency):
            parser.error("argument --latency-cap: only applies to --latency lognormal:...")
        latency = dataclasses.replace(latency, cap=ns.latency_cap)
    return latency


def _config_from(ns: argparse.Namespace) -> SimulatorConfig:
    def limit(n: int) -> int | None:
        return None if n == 0 else n

    timeline = None
    if ns.capacity_timeline:
        timeline = CapacityTimeline(ns.capacity_timeline, cycle=ns.capacity_cycle)
    elif ns.capacity_cycle:
        ns.parser.error("argument --capacity-cycle: needs --capacity-timeline")

    options: dict[str, Any] = {
        "host": ns.host,
        "port": ns.port,
        "concurrency": limit(ns.concurrency),
        "model_concurrency": {m: limit(n) for m, n in ns.model_concurrency},
        "rate": ns.rate,
        "retry_after": ns.retry_after,
        "latency": _latency_from(ns),
        "capacity_timeline": timeline,
        "quota_after": ns.quota_after,
        "quota_code": ns.quota_code,
        "quota_reset": ns.quota_reset,
        "quota_next_flush_time": ns.quota_next_flush_time,
        "arrears": ns.arrears,
        "faults": dict(ns.fault),
        "model_faults": dict(ns.model_fault),
        "status_overrides": {c: s for c, s in ns.status},
        "api_keys": ns.api_key or None,
        "models": ns.model or None,
        "stream_fail_after": ns.stream_fail_after,
        "stream_fail_reason": ns.stream_fail_reason,
        "stream_fail_probability": ns.stream_fail_probability,
        "seed": ns.seed,
    }
    return SimulatorConfig(**options)


def run(ns: argparse.Namespace) -> int:
    """Run the simulator in the foreground; returns the process exit code."""
    parser: argparse.ArgumentParser = ns.parser
    try:
        config = _config_from(ns)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))  # options that conflict: the same usage, error line and status 2 as a bad one
    if ns.verbose:
        logging.basicConfig(
            level=logging.DEBUG if ns.verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(message)s",
            stream=sys.stderr,
        )

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, Any] = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    sim = GLMSimulator(config)
    try:
        try:
            sim.start()
        except OSError as exc:
            print(
                f"glm-guard simulate: cannot listen on {ns.host}:{ns.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        for model in ns.overload_model:
            sim.overload_model(
                model,
                code=ns.overload_code,
                fraction=ns.overload_fraction,
                duration=ns.overload_for,
                switch_to=ns.overload_switch_to,
            )
        print(sim.base_url, flush=True)
        shown = config.capacity_timeline or config.concurrency or "unlimited"
        print(
            f"GLM simulator ready ({shown} in flight per key+model); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.2):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    s = sim.stats
    print(
        f"stopped: requests={s.total_requests} admitted={s.admitted} completed={s.completed} "
        f"rejected={dict(s.rejected)} peak_in_flight={s.peak_in_flight}",
        file=sys.stderr,
        flush=True,
    )
    return 0
