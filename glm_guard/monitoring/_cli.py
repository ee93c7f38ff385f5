"""``glm-guard monitor`` (the endpoints, standalone) and ``glm-guard stats`` (a table in the terminal).

Both run in a process of their own, which has made no calls: they read the fleet's counters
from Redis, found the way the workers find it (``GLM_GUARD_BACKEND`` when it names Redis,
else ``REDIS_URL``).  The URL comes only from the environment, never from the command line,
where ``ps`` would show its password.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .._config import get_settings
from .._errors import GLMGuardError
from ..backends._base import SharedStats, SharesStats
from . import _views
from ._app import DEFAULT_PREFIX, Monitor
from ._recorder import RECORDER

__all__ = ["main_monitor", "main_stats", "serve"]

logger = logging.getLogger("glm_guard.monitoring")


def shared_source() -> SharedStats | None:
    """The store the workers share their stats through, from the environment; ``None`` if none."""
    settings = get_settings()
    spec = settings.backend if settings.backend.lower() != "local" else settings.redis_url
    if spec is None:
        return None
    from ..backends import get_backend

    backend = get_backend(spec, parameter="REDIS_URL")
    return backend.shared_stats() if isinstance(backend, SharesStats) else None


class _Handler(BaseHTTPRequestHandler):
    monitor: Monitor
    server_version = "glm-guard-monitor"
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        try:  # read a body nobody asked for, so the next request on the connection parses
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 < length <= 65536:
            self.rfile.read(length)
        elif length or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
        path, _, query = self.path.partition("?")
        response = self.monitor.handle(
            self.command, urllib.parse.unquote(path), query, self.headers.get("Authorization")
        )
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def serve(monitor: Monitor, host: str, port: int) -> ThreadingHTTPServer:
    """A stdlib HTTP server for ``monitor`` (not started: call ``serve_forever``)."""
    handler = type("MonitorHandler", (_Handler,), {"monitor": monitor})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main_monitor(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="glm-guard monitor", description="Serve the monitoring endpoints.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"where the JSON endpoints live ({DEFAULT_PREFIX})")
    options = parser.parse_args(argv)
    try:
        source = shared_source()
        monitor = Monitor(source=source, prefix=options.prefix)
        server = serve(monitor, options.host, options.port)
    except (GLMGuardError, OSError) as error:
        print(f"glm-guard monitor: {error}", file=sys.stderr)
        return 2
    base = f"http://{options.host}:{server.server_address[1]}"
    where = f"Redis (prefix {get_settings().key_prefix!r})" if source else "this process only (no REDIS_URL set)"
    print(f"glm-guard monitor on {base}, stats from {where}", flush=True)
    paths = (f"{monitor.prefix}/stats", f"{monitor.prefix}/rate-limit-stats?window_minutes=60", "/metrics", "/healthz")
    for path in paths:
        print(f"  curl {base}{path}", flush=True)
    if get_settings().monitor_token:
        print("  (GLM_GUARD_MONITOR_TOKEN is set: add -H 'Authorization: Bearer <token>')", flush=True)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# -- glm-guard stats ------------------------------------------------------------------------------


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


def table(data: dict[str, Any]) -> str:
    """The stats (or the window stats) as an aligned text table, one row per key and a total."""
    columns = list(_COLUMNS)
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


def main_stats(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="glm-guard stats", description="Print the recorded numbers.")
    parser.add_argument("--window-minutes", type=int, default=None, help="only the last N minutes (1 to 1440)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args(argv)
    try:
        source = shared_source()
        recorder = RECORDER
        if options.window_minutes is None:
            data = _views.render_totals(*_views.read_totals(recorder, source), recorder.clock())
        else:
            minutes = _views.check_window(options.window_minutes)
            name, per_key, error = _views.read_window(recorder, minutes, source)
            data = _views.render_window(name, per_key, error, recorder.clock(), minutes)
    except GLMGuardError as error:
        print(f"glm-guard stats: {error}", file=sys.stderr)
        return 2
    if source is None:
        print("glm-guard stats: no REDIS_URL set, so there is no shared data to read", file=sys.stderr)
    print(json.dumps(data, ensure_ascii=False, indent=2) if options.json else table(data))
    return 0
