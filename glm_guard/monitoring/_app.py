"""The monitoring endpoints: one request handler, served by ASGI or by the standard library.

The handler is plain synchronous code (reading Redis blocks), so the ASGI adapter runs it in
a worker thread and the stdlib server calls it directly; both give the same answers.
"""

from __future__ import annotations

import hmac
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from .._config import get_settings
from .._errors import ConfigurationError
from ..backends._base import SharedStats
from . import _page, _series, _views
from ._counters import RETENTION_MINUTES
from ._recorder import RECORDER, CounterSource

__all__ = ["DEFAULT_PREFIX", "Monitor", "Response", "create_app"]

DEFAULT_PREFIX: Final = "/api/v1/monitoring"
_JSON: Final = "application/json; charset=utf-8"
_DIGITS: Final = re.compile(r"[0-9]{1,9}")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, data: object, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
    return Response(status, body, _JSON, headers)


def _minutes(query: dict[str, list[str]], limit: int, why: str) -> int | Response:
    """``window_minutes`` (default 60) from the query, or the 400 that refuses it."""
    values = query.get("window_minutes", ["60"])
    problem = f"window_minutes must be a whole number of minutes from 1 to {limit} ({why})"
    if len(values) != 1 or not _DIGITS.fullmatch(values[0]) or not 1 <= int(values[0]) <= limit:
        return _error(400, problem)
    return int(values[0])


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return _json(status, {"error": {"status": status, "message": message}}, headers)


class Monitor:
    """The monitoring app: an ASGI callable, and :meth:`handle` for any other server.

    ``source`` is where the numbers come from: ``None`` for what ``glm_guard.stats()`` reads
    (Redis when this process shares its stats there, else this process), or a stats source
    such as a backend's ``shared_stats()``.  ``token`` (default ``GLM_GUARD_MONITOR_TOKEN``, read on each
    request) makes every endpoint but ``/healthz`` require ``Authorization: Bearer <token>``.
    ``prefix`` is where the JSON endpoints live; ``/metrics``, ``/healthz`` and the page (``/``,
    which holds no data and loads without the token) sit at the root.
    """

    def __init__(
        self, *, source: CounterSource | None = None, token: str | None = None, prefix: str = DEFAULT_PREFIX
    ) -> None:
        if not isinstance(prefix, str) or (prefix and not prefix.startswith("/")):
            raise ConfigurationError("prefix", f"must be empty or start with '/', got {prefix!r}")
        self.source = source
        self.token = token
        self.prefix = prefix.rstrip("/")
        self._routes: dict[str, Callable[[dict[str, list[str]]], Response]] = {
            f"{self.prefix}/stats": self._stats,
            f"{self.prefix}/rate-limit-stats": self._window,
            f"{self.prefix}/series": self._series,
            "/metrics": self._metrics,
            "/healthz": self._health,
        }

    # -- the handler ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: str = "", authorization: str | None = None) -> Response:
        """Answer one request; never raises, never puts a secret or a prompt in the answer."""
        path = path.rstrip("/") or "/"
        if path in _page.ASSETS and path not in self._routes:
            return self._asset(method, path)
        route = self._routes.get(path)
        if route is None:
            return _error(404, f"no such endpoint; try GET {self.prefix}/stats")
        if method not in ("GET", "HEAD"):
            return _error(405, "only GET and HEAD are served", (("Allow", "GET, HEAD"),))
        if route != self._health and not self._authorized(authorization):
            return _error(401, "a valid bearer token is required", (("WWW-Authenticate", 'Bearer realm="glm_guard"'),))
        try:
            return route(urllib.parse.parse_qs(query, keep_blank_values=True))
        except Exception as error:  # a bug or an outage must still answer, without details
            return _error(500, f"internal error ({type(error).__name__})")

    def _authorized(self, authorization: str | None) -> bool:
        expected = get_settings().monitor_token if self.token is None else self.token
        if not expected:
            return True
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), expected.encode())

    def _stats(self, query: dict[str, list[str]]) -> Response:
        return _json(200, _views.render_totals(*_views.read_totals(RECORDER, self.source), RECORDER.clock()))

    def _window(self, query: dict[str, list[str]]) -> Response:
        minutes = _minutes(query, RETENTION_MINUTES, "the minutes kept")
        if isinstance(minutes, Response):
            return minutes
        name, per_key, error = _views.read_window(RECORDER, minutes, self.source)
        return _json(200, _views.render_window(name, per_key, error, RECORDER.clock(), minutes))

    def _series(self, query: dict[str, list[str]]) -> Response:
        minutes = _minutes(query, _series.MAX_SERIES_MINUTES, "the most the page charts")
        if isinstance(minutes, Response):
            return minutes
        return _json(200, _series.read_series(RECORDER, minutes, self.source))

    def _asset(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _error(405, "only GET and HEAD are served", (("Allow", "GET, HEAD"),))
        body, content_type = _page.asset(path, self.prefix)
        return Response(200, body, content_type, (("Content-Security-Policy", _page.CSP),))

    def _metrics(self, query: dict[str, list[str]]) -> Response:
        try:
            from ._prometheus import CONTENT_TYPE, render
        except ImportError:
            return _error(501, "GET /metrics needs prometheus_client: pip install 'glm-guard[prometheus]'")
        _, totals, _ = _views.read_totals(RECORDER, self.source)
        _, hour, _ = _views.read_window(RECORDER, 60, self.source)
        return Response(200, render(totals, hour), CONTENT_TYPE)

    def _health(self, query: dict[str, list[str]]) -> Response:
        source = self.source or RECORDER.source()
        reachable = source.reachable() if isinstance(source, SharedStats) else True
        body = {"status": "ok" if reachable else "unavailable", "source": source.name, "backend_reachable": reachable}
        return _json(200 if reachable else 503, body)

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix (Starlette's Mount, root_path)
            path = path[len(root) :] or "/"
        authorization = None
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        method = scope.get("method", "GET")
        response = await _in_thread(lambda: self.handle(method, path, query, authorization))
        headers = [(b"content-type", response.content_type.encode()), (b"cache-control", b"no-store")]
        headers += [(k.lower().encode(), v.encode()) for k, v in response.headers]
        headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else response.body})


async def _in_thread(call: Callable[[], Response]) -> Response:
    """Run blocking reads off the event loop (asyncio servers); elsewhere, inline."""
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:
        return call()
    return await loop.run_in_executor(None, call)


def create_app(
    *, source: CounterSource | None = None, token: str | None = None, prefix: str = DEFAULT_PREFIX
) -> Monitor:
    """A monitoring app; see :class:`Monitor` for the arguments."""
    return Monitor(source=source, token=token, prefix=prefix)
