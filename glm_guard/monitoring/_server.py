"""A small asyncio HTTP/1.1 server for the monitoring app, for ``glm-guard monitor`` and tests.

The app (:class:`~glm_guard.monitoring.Monitor`) knows nothing of sockets; this module carries
its requests and answers.  It is built on asyncio rather than ``http.server`` because a thread
per connection lets any client that opens connections and sends nothing hold a thread each:
here a connection waiting for its request costs a socket and a small task, and only complete
requests reach the few worker threads that run the (blocking) handler.  The HTTP itself (the
request's syntax, Content-Length and chunked bodies, keep-alive, HEAD, the answer's framing) is
left to h11, python-hyper's sans-IO HTTP/1.1 library (the one under httpx): where a request
ends is where hand-written parsers go wrong, and h11 is strict, small and well kept.  This
module only does the I/O and the bounds:

* ``request_timeout`` (5 s): a request's head and body must arrive whole within it, counted
  from the connection's opening or its previous answer, so neither an idle client nor one
  trickling a byte at a time keeps a connection longer; an answer must be taken within it too.
* ``max_connections`` (256): at the bound, of the connections waiting on their client (for a
  request, or to take an answer) the one waiting longest is closed to make room, so a flood of
  idle connections cannot lock out a request.
* ``workers`` (4): threads running the handler; more complete requests wait their turn.
* a request head over 16 KiB or 100 header lines is refused (431); of a body, 64 KiB at most is
  read (and dropped), and a longer one ends the connection after the answer.
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
from http import HTTPStatus
from typing import Final

import h11

from .._errors import ConfigurationError
from ._app import Monitor, Response, _error

__all__ = ["MonitorServer"]

logger = logging.getLogger("glm_guard.monitoring")

REQUEST_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 256
WORKERS: Final = 4
_HEAD_LIMIT: Final = 16 * 1024
# h11 refuses a head once more than its max_incomplete_event_size waits unparsed, but takes a
# complete one of any size: fed a chunk at a time, no head over that size plus a chunk gets in.
_CHUNK: Final = 1024
_MAX_HEADERS: Final = 100
_BODY_LIMIT: Final = 64 * 1024
_SERVER: Final = "glm-guard-monitor"
# Not h11's own messages: they can quote the offending header line, credentials and all.
_REFUSALS: Final = {
    431: f"the request head is limited to {_HEAD_LIMIT} bytes and {_MAX_HEADERS} header lines",
    501: "a request body's Transfer-Encoding may only be chunked",
    505: "only HTTP/1.0 and HTTP/1.1 are served",
}


async def _receive(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type[h11.NEED_DATA | h11.PAUSED]:
    """The client's next event, read as needed; a client gone mid-request is an ``OSError``."""
    while (event := conn.next_event()) is h11.NEED_DATA:
        data = await reader.read(_CHUNK)
        conn.receive_data(data)
        if not data:
            try:
                return conn.next_event()  # ConnectionClosed between requests
            except h11.RemoteProtocolError:
                raise ConnectionAbortedError("the client left mid-request") from None
    return event


def _check(request: h11.Request) -> str | None:
    """The request's Authorization, once it is known to be one this server answers."""
    if request.http_version not in (b"1.0", b"1.1"):
        raise h11.RemoteProtocolError(_REFUSALS[505], error_status_hint=505)
    if len(request.headers) > _MAX_HEADERS:
        raise h11.RemoteProtocolError(_REFUSALS[431], error_status_hint=431)
    authorization = [value for name, value in request.headers if name == b"authorization"]
    if len(authorization) > 1:
        raise h11.RemoteProtocolError("repeated Authorization header")
    return authorization[0].decode("latin-1") if authorization else None


async def _drop_body(conn: h11.Connection, reader: asyncio.StreamReader) -> None:
    """Read the body and drop it, up to the limit; one left unread ends the connection after the answer."""
    dropped = 0
    while dropped <= _BODY_LIMIT and not conn.they_are_waiting_for_100_continue:
        event = await _receive(conn, reader)
        if not isinstance(event, h11.Data):
            return
        dropped += len(event.data)


def _frame(conn: h11.Connection, response: Response, *, head_only: bool) -> bytes:
    """The answer on the wire; h11 adds ``Connection: close`` when the connection is to end."""
    headers = [
        ("Server", _SERVER),
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Cache-Control", "no-store"),
        *response.headers,
    ]
    if conn.their_state is not h11.DONE:  # a refused request, or a body left unread
        headers.append(("Connection", "close"))
    reason = HTTPStatus(response.status).phrase
    wire = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    if not head_only:
        wire += conn.send(h11.Data(data=response.body))
    return wire + conn.send(h11.EndOfMessage())


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
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_HEAD_LIMIT - _CHUNK)
        answered = False  # the last thing sent was a whole answer: close without resetting it away
        try:
            while True:
                answered, method = False, ""
                try:
                    async with self._client_turn(writer):  # the whole request, not each read
                        request = await _receive(conn, reader)
                        if not isinstance(request, h11.Request):
                            return  # closed between requests
                        method = request.method.decode("ascii")
                        authorization = _check(request)
                        await _drop_body(conn, reader)
                except h11.RemoteProtocolError as error:
                    status = error.error_status_hint
                    answer = _error(status, _REFUSALS.get(status, "malformed HTTP/1.1 request"))
                else:
                    path, _, query = request.target.decode("latin-1").partition("?")
                    handle = functools.partial(self.monitor.handle, method, urllib.parse.unquote(path))
                    answer = await asyncio.get_running_loop().run_in_executor(pool, handle, query, authorization)
                    logger.debug("%s %s %s %d", peer, method, path, answer.status)
                writer.write(_frame(conn, answer, head_only=method == "HEAD"))
                async with self._client_turn(writer):
                    await writer.drain()
                answered = True
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # MUST_CLOSE: h11's keep-alive rules (Connection: close, HTTP/1.0) end it here
                conn.start_next_cycle()
        except (TimeoutError, OSError):
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
