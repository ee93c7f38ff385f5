"""``glm-guard monitor``: serve the monitoring endpoints and page, standalone, over the fleet's numbers."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .._config import get_settings
from .._errors import GLMGuardError
from ..monitoring import DEFAULT_PREFIX, Monitor
from ..monitoring._server import MAX_CONNECTIONS, REQUEST_TIMEOUT, MonitorServer
from ._fleet import shared_source

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the monitoring endpoints and, at /, a page of charts over them. "
        "The numbers come from the Redis the workers share their stats "
        "through (GLM_GUARD_BACKEND when it names Redis, else REDIS_URL); without one, from this process only."
    )
    parser.epilog = "Exit status: 0 after SIGINT/SIGTERM, 2 when the server cannot start or Redis is misconfigured."
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"where the JSON endpoints live ({DEFAULT_PREFIX})")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        metavar="SECONDS",
        help=f"drop a client that sends no whole request or takes no answer within this (default {REQUEST_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help=f"connections held at once; beyond, the longest-idle one is closed (default {MAX_CONNECTIONS})",
    )


def run(options: argparse.Namespace) -> int:
    try:
        source = shared_source()
        monitor = Monitor(source=source, prefix=options.prefix)
        server = MonitorServer(
            monitor,
            options.host,
            options.port,
            request_timeout=options.request_timeout,
            max_connections=options.max_connections,
        )
    except (GLMGuardError, OSError) as error:
        print(f"glm-guard monitor: {error}", file=sys.stderr)
        return 2
    base = f"http://{options.host}:{server.server_address[1]}"
    where = f"Redis (prefix {get_settings().key_prefix!r})" if source else "this process only (no REDIS_URL set)"
    print(f"glm-guard monitor on {base}, stats from {where}", flush=True)
    paths = (f"{monitor.prefix}/stats", f"{monitor.prefix}/rate-limit-stats?window_minutes=60", "/metrics", "/healthz")
    for path in paths:
        print(f"  curl {base}{path}", flush=True)
    print(f"  charts in a browser: {base}/", flush=True)
    if get_settings().monitor_token:
        print("  (GLM_GUARD_MONITOR_TOKEN is set: add -H 'Authorization: Bearer <token>';", flush=True)
        print(f"   in the browser, type it into the page or open {base}/#token=<token>)", flush=True)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
