"""This process's clients for one Redis URL: one sync client (with its pool), one async client per loop.

Everything goes through redis-py's public client API, so TLS, Unix sockets and (later)
Sentinel and Cluster are redis-py's business.  Redis failures become the library's own
:class:`~glm_guard.BackendError` here and nowhere else, and every success tells the
:class:`Health` that Redis answers.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript, Script
from redis.retry import Retry

from ..._config import mask_url
from ..._errors import BackendError
from . import _scripts
from ._health import Health

T = TypeVar("T")

#: What redis-py raises: its own errors, and socket errors it let through.
_FAILURES = (redis.RedisError, OSError)
_RETRIED = (redis.ConnectionError,)


class _LoopClient(NamedTuple):
    client: redis.asyncio.Redis
    scripts: dict[str, AsyncScript]
    closer: AsyncIterator[None]  # closes the client when the loop shuts its async generators down


class Connections:
    """A sync client per process and an async client per event loop (loops cannot share sockets).

    redis-py retries a request once, at once, on a connection error only: a connection the
    server closed while idle (a restart, an idle timeout) fails on first use, and the retry
    takes a fresh one.  A request the server did run before the link broke is run twice:
    harmless for the scripts, which name each attempt by its token; a cache claim would find
    itself taken and wait out its own fill lease (a rare cost, only when a link breaks
    mid-request).  Not its default (ten retries, with backoff, timeouts too): that would hold a call for
    seconds against a dead or paused server, and the outage policy is meant to answer at once.
    """

    def __init__(self, url: str, socket_timeout: float, health: Health) -> None:
        self._url = url
        self._timeout = socket_timeout
        self._health = health
        self._outcome = _Outcome(self)
        self.after_fork()

    def after_fork(self) -> None:
        """Forget every client: also the state of a forked child, which must not use its parent's sockets.

        Takes no lock, since a lock another thread held at the fork would never open in the child.
        """
        self._lock = threading.Lock()
        self._sync: tuple[redis.Redis, dict[str, Script]] | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()

    def _open(self) -> tuple[redis.Redis, dict[str, Script]]:
        with self._lock:
            if self._sync is None:
                client = redis.Redis.from_url(
                    self._url,
                    retry=Retry(NoBackoff(), 1, _RETRIED),
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                )
                self._sync = (client, _scripts.register(client))
            return self._sync

    def client(self) -> redis.Redis:
        """The sync client: its pool serves every thread of this process."""
        return (self._sync or self._open())[0]

    async def _loop_client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            # No socket_timeout here: redis-py would bound every send with asyncio.wait_for, a task
            # (an extra turn of the loop) per request.  Each request is bounded as a whole instead.
            client = redis.asyncio.Redis.from_url(
                self._url, retry=AsyncRetry(NoBackoff(), 1, _RETRIED), socket_connect_timeout=self._timeout
            )
            closer = _close_with_loop(client)
            await anext(closer)  # the loop now tracks it and closes the client at shutdown_asyncgens
            entry = self._loops[loop] = _LoopClient(client, _scripts.register_async(client), closer)
        return entry

    # -- requests: a failure becomes a BackendError, a success tells Health -----------------

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the packaged script ``name`` and return its reply."""
        scripts = (self._sync or self._open())[1]
        with self._outcome:
            return scripts[name](keys, args)

    async def run_async(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        entry = await self._loop_client()
        with self._outcome:
            async with asyncio.timeout(self._timeout):  # a cancelled read disconnects its connection
                return await entry.scripts[name](keys, args)

    def call(self, command: Callable[[redis.Redis], T]) -> T:
        """``command(client)``: plain commands (``GET``, ``SET``) on the same pool as the scripts."""
        client = (self._sync or self._open())[0]
        with self._outcome:
            return command(client)

    async def call_async(self, command: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
        entry = await self._loop_client()
        with self._outcome:
            async with asyncio.timeout(self._timeout):
                return await command(entry.client)

    def wrap(self, error: BaseException) -> BackendError:
        """The library's error for a Redis failure; the URL's password never appears in it."""
        detail = str(error) or f"no reply within {self._timeout} s"
        return BackendError(f"redis backend {mask_url(self._url)}: {type(error).__name__}: {detail}")

    def close(self) -> None:
        """Close the sync pool; each async client closes with its own loop."""
        with self._lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync[0].close()


class _Outcome:
    """Around every request: a Redis failure becomes a :class:`BackendError`, a success is reported.

    It keeps no state of its own, so one serves every thread and task at once.
    """

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        if error is None:
            health = self._connections._health
            if health.failures:
                health.succeeded()
        elif isinstance(error, _FAILURES):
            raise self._connections.wrap(error) from error


async def _close_with_loop(client: redis.asyncio.Redis) -> AsyncIterator[None]:
    """An async generator whose ``finally`` runs when ``asyncio.run`` shuts the loop down."""
    try:
        yield
    finally:
        await client.aclose()
