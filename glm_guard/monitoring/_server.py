"""A small standard-library HTTP/1.1 server for the monitoring app, for ``glm-guard monitor`` and tests.

The app (:class:`~glm_guard.monitoring.Monitor`) knows nothing of sockets; this module carries
its requests and answers.  It is built on asyncio rather than ``http.server`` because a thread
per connection lets any client that opens connections and sends nothing hold a thread each:
here a connection waiting for its request costs a socket and a small task, and only complete
requests reach the few worker threads that run the (blocking) handler.  Its bounds:

* ``request_timeout`` (5 s): a request's head and body must arrive whole within it, counted
  from the connection's opening or its previous answer, so neither an idle client nor one
  trickling a byte at a time keeps a connection longer; an answer must be taken within it too.
* ``max_connections`` (256): at the bound, of the connections waiting on their client (for a
  request, or to take an answer) the one waiting longest is closed to make room, so a flood of
  idle connections cannot lock out a request.
* ``workers`` (4): threads running the handler; more complete requests wait their turn.
* a request head over 16 KiB or 100 header lines is refused (431), a body over 64 KiB unread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import functools
import logging
import socket
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from .._errors import ConfigurationError
from ._app import Monitor, Response, _error

__all__ = ["MonitorServer", "serve"]

logger = logging.getLogger("glm_guard.monitoring")

REQUEST_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 256
WORKERS: Final = 4
_HEAD_LIMIT: Final = 16 * 1024
_MAX_HEADERS: Final = 100
_BODY_LIMIT: Final = 64 * 1024
_SERVER: Final = "glm-guard-monitor"


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    authorization: str | None
    keep_alive: bool


class _Refused(Exception):
    """A request that cannot be served; the connection answers ``response`` and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = _error(status, message)


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # no end of line within the stream's limit, the head limit
        raise _Refused(431, f"the request head is limited to {_HEAD_LIMIT} bytes") from None


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on the connection, its body read and dropped; ``None`` at a clean end."""
    line = await _line(reader)
    if not line:
        return None
    size, lines = len(line), list[str]()
    while True:
        header = await _line(reader)
        size += len(header)
        if not header.endswith(b"\n"):
            raise asyncio.IncompleteReadError(header, None)
        if header in (b"\r\n", b"\n"):
            break
        if size > _HEAD_LIMIT or len(lines) >= _MAX_HEADERS:
            raise _Refused(431, f"the request head is limited to {_HEAD_LIMIT} bytes and {_MAX_HEADERS} lines")
        lines.append(header.decode("latin-1").rstrip("\r\n"))
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _Refused(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _Refused(505, "only HTTP/1.0 and HTTP/1.1 are served")
    headers: dict[str, str] = {}
    for text in lines:
        name, colon, value = text.partition(":")
        name = name.lower()
        if not colon or not name or name != name.strip() or (name in headers and name != "connection"):
            raise _Refused(400, "malformed or repeated header")
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit() and len(length) <= 18):
        raise _Refused(400, "malformed Content-Length")
    if "transfer-encoding" in headers or int(length) > _BODY_LIMIT:
        keep_alive = False  # a body nobody asked for, not worth reading: end the connection after the answer
    elif int(length):
        await reader.readexactly(int(length))
    return _Request(method, target, headers.get("authorization"), keep_alive)


def _encode(response: Response, *, head_only: bool, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
        f"Server: {_SERVER}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class MonitorServer:
    """Serves ``monitor`` on a socket bound at construction; see the module for its bounds.

    Used like ``socketserver``'s servers: ``serve_forever()`` in one thread, ``shutdown()``
    from another (it returns once serving has stopped), then ``server_close()``.
    """

    def __init__(
        self,
        monitor: Monitor,
        host: str,
        port: int,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        workers: int = WORKERS,
    ) -> None:
        if not (isinstance(request_timeout, int | float) and 0 < request_timeout <= 3600):
            raise ConfigurationError("request_timeout", f"must be seconds in (0, 3600], got {request_timeout!r}")
        for name, value in (("max_connections", max_connections), ("workers", workers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(name, f"must be a whole number of at least 1, got {value!r}")
        self.monitor = monitor
        self.request_timeout = float(request_timeout)
        self.max_connections = max_connections
        self.workers = workers
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self.socket = socket.create_server((host, port), family=family, backlog=128)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._state = threading.Lock()
        self._stopping = False
        self._wake: Callable[[], object] | None = None  # ends the running serve_forever
        self._stopped = threading.Event()
        self._stopped.set()
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # oldest first: evicted first
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`."""
        self._stopped.clear()
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned (call from another thread)."""
        with self._state:
            self._stopping = True
            if self._wake is not None:
                self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()

    async def _serve(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with self._state:
            if self._stopping:  # shut down before it started
                return
            self._wake = lambda: loop.call_soon_threadsafe(stop.set)
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="glm-guard-monitor")
        server = await asyncio.start_server(lambda r, w: self._accept(r, w, pool), sock=self.socket, limit=_HEAD_LIMIT)
        try:
            await stop.wait()
        finally:
            with self._state:
                self._wake = None
            server.close()
            for writer in list(self._open):
                writer.transport.abort()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            pool.shutdown(wait=False, cancel_futures=True)

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pool: concurrent.futures.Executor
    ) -> None:
        if len(self._open) >= self.max_connections:
            if not self._waiting:  # every connection is being answered: this one waits for none
                writer.transport.abort()
                return
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.transport.abort()  # its read ends at once; its task cleans up
            self._open.discard(oldest)
        self._open.add(writer)
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer, pool))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pool: concurrent.futures.Executor
    ) -> None:
        peer = writer.get_extra_info("peername")
        answered = False  # the last thing sent was a whole answer: close without resetting it away
        try:
            keep_alive = True
            while keep_alive:
                answered = False
                try:
                    async with self._client_turn(writer):  # the whole request, not each read
                        request = await _read_request(reader)
                except _Refused as refused:
                    keep_alive, answer, head_only = False, refused.response, False
                else:
                    if request is None:
                        return
                    path, _, query = request.target.partition("?")
                    handle = functools.partial(self.monitor.handle, request.method, urllib.parse.unquote(path))
                    answer = await asyncio.get_running_loop().run_in_executor(
                        pool, handle, query, request.authorization
                    )
                    logger.debug("%s %s %s %d", peer, request.method, path, answer.status)
                    keep_alive, head_only = request.keep_alive, request.method == "HEAD"
                writer.write(_encode(answer, head_only=head_only, keep_alive=keep_alive))
                async with self._client_turn(writer):
                    await writer.drain()
                answered = True
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass  # too slow, or gone: drop the connection without an answer
        finally:
            if answered:
                await self._linger(reader, writer)
            self._open.discard(writer)
            writer.transport.abort()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send a FIN after the answer and read what the client still sends until it closes.

        Closing with unread bytes (a refused head, a body left unread) would send a reset,
        which can destroy an answer the client has not read yet.
        """
        try:
            async with self._client_turn(writer):
                writer.write_eof()
                while await reader.read(65536):
                    pass
        except (TimeoutError, OSError):
            pass

    @contextlib.asynccontextmanager
    async def _client_turn(self, writer: asyncio.StreamWriter) -> AsyncIterator[None]:
        """While the connection waits on its client: at most the request timeout, and evictable."""
        self._waiting[writer] = None  # appended: the newest, evicted last
        try:
            async with asyncio.timeout(self.request_timeout):
                yield
        finally:
            self._waiting.pop(writer, None)


def serve(
    monitor: Monitor,
    host: str,
    port: int,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    workers: int = WORKERS,
) -> MonitorServer:
    """A server for ``monitor``, bound but not started: call ``serve_forever``."""
    return MonitorServer(
        monitor, host, port, request_timeout=request_timeout, max_connections=max_connections, workers=workers
    )
