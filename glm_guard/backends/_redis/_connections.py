"""This process's clients for one Redis URL: one sync client (with its pool), one async client per loop.

Everything goes through redis-py's public client API, so TLS, Unix sockets, Sentinel and
Cluster are redis-py's business (``_clients`` opens the right client for the URL).  Redis
failures become the library's own errors here and nowhere else, sorted by what they say about
Redis:

- it cannot be reached (connection refused or lost, timeout, wrong password, loading):
  :class:`~glm_guard.BackendError`, and the backend counts as unreachable;
- it answered, but refused this request for a state that passes (out of memory, a read-only
  replica, a failed save, a busy script): :class:`~glm_guard.BackendRefused`, which that call's
  outage policy serves while the backend stays in use;
- it rejected the request itself (bad argument, wrong key type, missing database or ACL
  permission): :class:`~glm_guard.BackendRequestError`, raised to that caller, since no outage
  policy can fix a bug or a misconfigured server.

Every success tells the :class:`Health` that Redis answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script

from ..._config import mask_url
from ..._errors import BackendError, BackendRefused, BackendRequestError
from ..._redis_url import redis_target
from . import _scripts
from ._clients import AsyncClient, Client, open_async, open_sync
from ._health import Health

T = TypeVar("T")

#: What redis-py raises: its own errors, and socket errors it let through (TimeoutError too);
#: its Cluster client's errors (no node answers, say) are not ``RedisError``s.
_FAILURES = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)
#: Error replies that say Redis is up but will not do this now; the first word of the reply.
_REFUSALS = frozenset({"OOM", "READONLY", "MISCONF", "BUSY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN"})
_REFUSAL_CLASSES = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
#: Longest part of a Redis error reply quoted in glm_guard's message.
_QUOTED = 200


class _LoopClient(NamedTuple):
    client: AsyncClient
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
        self._target = redis_target(url)
        self._timeout = socket_timeout
        self._health = health
        self.after_fork()

    def after_fork(self) -> None:
        """Forget every client: also the state of a forked child, which must not use its parent's sockets.

        Takes no lock, since a lock another thread held at the fork would never open in the child.
        """
        self._lock = threading.Lock()
        self._sync: tuple[Client, dict[str, Script], Callable[[], None]] | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()

    def _open(self) -> tuple[Client, dict[str, Script], Callable[[], None]]:
        with self._lock:
            if self._sync is None:
                client, close = open_sync(self._target, self._timeout)
                self._sync = (client, _scripts.register(client), close)
            return self._sync

    def client(self) -> Client:
        """The sync client: its pool serves every thread of this process."""
        return (self._sync or self._open())[0]

    async def _loop_client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            self._forget_closed_loops()
            client, aclose = open_async(self._target, self._timeout)  # each request is bounded below
            closer = _close_with_loop(aclose)
            await anext(closer)  # the loop now tracks it and closes the client at shutdown_asyncgens
            entry = self._loops[loop] = _LoopClient(client, _scripts.register_async(client), closer)
        return entry

    def _forget_closed_loops(self) -> None:
        """Drop the clients of loops closed without ``shutdown_asyncgens``, which never closed them.

        Their sockets belong to a dead loop, which can no longer close them; once nothing holds
        them the garbage collector does.  The entry itself keeps its loop alive (the client's
        transports point to it), so without this sweep each such loop would keep a connection
        to Redis for as long as the process runs.
        """
        for loop in [loop for loop in list(self._loops) if loop.is_closed()]:
            self._loops.pop(loop, None)

    # -- requests: a failure becomes a BackendError, a success tells Health -----------------

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the packaged script ``name`` and return its reply."""
        with _Outcome(self):  # opening may fail too: a Cluster client asks for the nodes at once
            scripts = (self._sync or self._open())[1]
            return scripts[name](keys, args)

    async def run_async(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with _Outcome(self):
            entry = await self._loop_client()
            async with asyncio.timeout(self._timeout):  # a cancelled read disconnects its connection
                return await entry.scripts[name](keys, args)

    def call(self, command: Callable[[Client], T]) -> T:
        """``command(client)``: plain commands (``GET``, ``SET``) on the same pool as the scripts."""
        with _Outcome(self):
            client = (self._sync or self._open())[0]
            return command(client)

    async def call_async(self, command: Callable[[AsyncClient], Awaitable[T]]) -> T:
        with _Outcome(self):
            entry = await self._loop_client()
            async with asyncio.timeout(self._timeout):
                return await command(entry.client)

    def wrap(self, error: BaseException, sent: float | None = None) -> BackendError | BackendRequestError:
        """The library's error for a Redis failure (see the module's docstring); never with the password."""
        where = f"redis backend {mask_url(self._url)}"
        if isinstance(error, redis.ResponseError) and _refusal(error):
            refused = BackendRefused(f"{where} refused the request: {_reply(error)}")
            refused.sent = sent
            return refused
        if isinstance(error, (redis.ResponseError, redis.DataError)):
            hint = " (the URL names a database this server does not have)" if "DB index" in str(error) else ""
            return BackendRequestError(
                f"{where} rejected a request glm_guard sent: {_reply(error)}{hint}; "
                "a bug in glm_guard or a server set up differently than it expects, so it is raised, "
                "not served by the outage policy"
            )
        detail = str(error) or f"no reply within {self._timeout} s"
        failure = BackendError(f"{where}: {type(error).__name__}: {detail[:_QUOTED]}")
        failure.sent = sent
        return failure

    def close(self) -> None:
        """Close the sync pool; each async client closes with its own loop."""
        with self._lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync[2]()


class _Outcome:
    """Around one request: a Redis failure becomes the library's error, a success is reported.

    It notes when the request was sent, so :class:`Health` can tell a probe that failed from
    a call that was already in flight when Redis went away.
    """

    __slots__ = ("_connections", "_sent")

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._sent = time.monotonic()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        if error is None:
            health = self._connections._health
            if health.failures:
                health.succeeded()
        elif isinstance(error, _FAILURES):
            raise self._connections.wrap(error, self._sent) from error


def _refusal(error: redis.ResponseError) -> bool:
    """Whether an error reply refuses for a passing state of the server (its first word says so)."""
    if isinstance(error, _REFUSAL_CLASSES):  # redis-py strips the first word of these
        return True
    code = getattr(error, "status_code", None) or str(error).partition(" ")[0]
    return code in _REFUSALS


def _reply(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:_QUOTED]}"


async def _close_with_loop(aclose: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """An async generator whose ``finally`` runs when ``asyncio.run`` shuts the loop down."""
    try:
        yield
    finally:
        await aclose()
