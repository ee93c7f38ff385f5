"""A standard-library HTTP server for the monitoring app, for ``glm-guard monitor`` and tests.

The app itself (:class:`~glm_guard.monitoring.Monitor`) knows nothing of sockets; this module
only carries its requests and responses over ``http.server``, so no ASGI server is needed.
"""

from __future__ import annotations

import logging
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._app import Monitor

__all__ = ["serve"]

logger = logging.getLogger("glm_guard.monitoring")


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
