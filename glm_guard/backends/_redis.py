"""The Redis backend: one limit, one concurrency pool, one cooldown, one cache for all.

Every admission is one Lua script run by SHA (sent once with its source after a NOSCRIPT),
on the server's clock (``TIME``), so hosts with skewed clocks share one correct limit.
Requests are packed here and go out on connections the backend keeps, with redis-py's
``send_packed_command`` / ``read_response``: its generic command path costs more per call
than the script does.  Within a process only the first waiter of a key talks to Redis
(the others queue behind it locally, in arrival order), and it sleeps until the moment the
script names, so a thousand waiting tasks cost Redis what one does.

Key layout, for a limiter key ``K`` and prefix ``P`` (default ``glm_guard:``)::

    P{K}:starts     ZSET  the last ``calls`` start times (expires after period + 1 s)
    P{K}:leases     ZSET  concurrency leases -> expiry (expires after 2 leases + 1 s)
    P{K}:cooldown   STR   pause deadline in server ms (expires at the deadline)
    P{K}:released   pub/sub channel: a lease was given back
    Pcache:v1:N:D   STR   cached value (expires after the ttl); v1 the key format, N, D digests
    P...:D:fill     STR   who is computing D right now (expires after the fill lease)

The ``{K}`` hash tag keeps one key's data in one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import hmac
import importlib.resources
import itertools
import json
import logging
import os
import pickle
import select
import socket
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from .._cache_keys import KEY_VERSION
from .._config import get_settings, mask_url
from .._errors import BackendError, ConfigurationError, RateLimitTimeout
from ._base import AsyncPermit, Backend, CacheStore, Limiter, LimitPolicy, Permit
from ._local import LocalCacheStore, LocalLimiter, _resolve

__all__ = ["RedisBackend", "RedisCacheStore", "RedisLimiter"]

logger = logging.getLogger("glm_guard")

#: How long a waiter for a concurrency slot sleeps at most before asking again, in case
#: the release notice was missed (a holder that died gives its slot back by lease expiry).
CONCURRENCY_POLL_SECONDS: Final = 0.25
#: A caller that may start this much after the moment Redis gave it gives the slot back and
#: asks again: started that late it could share a window with the starts given after its own.
#: The moment is known only within the request's round trip, so that counts as late too.
LATE_START_SECONDS: Final = 0.01
#: Redis decides a start on its clock; the caller starts after the reply arrives (and any
#: sleep).  The window is kept this much longer than ``period`` (at most 2 % of it), so a
#: start up to LATE_START_SECONDS late, as the caller sees it, still never shares a window
#: with ``calls`` others.  A 60 s window loses 0.03 % of its budget, a 1 s window 2 %.
WINDOW_MARGIN_SECONDS: Final = 0.02


def _window_ms(period: float) -> int:
    """The window the script enforces for ``period``: the period plus its margin, in ms."""
    return int(period * 1000) + int(min(WINDOW_MARGIN_SECONDS, period * 0.02) * 1000)


_TURNSTILE: Final = LimitPolicy(None, 1.0, 1)
_JSON_TAG: Final = b"gg1j:"
_PICKLE_TAG: Final = b"gg1p:"


_token_counter = itertools.count()
_token_prefix = [uuid.uuid4().hex[:12].encode()]


def _new_token_prefix() -> None:
    _token_prefix[0] = uuid.uuid4().hex[:12].encode()


if hasattr(os, "register_at_fork"):  # a forked child must not repeat its parent's tokens
    os.register_at_fork(after_in_child=_new_token_prefix)


def _new_token() -> bytes:
    """A token unique across processes: a random per-process prefix and a counter."""
    return b"%b%x" % (_token_prefix[0], next(_token_counter))


LIVE_BACKENDS: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


def _forget_parent_connections() -> None:
    """In a forked child: never send on a socket the parent still reads replies from.

    The kept connections are taken without the fork check that every other path makes, so
    they are dropped here, before the child can run anything (redis-py does not shut down
    a socket whose connection belongs to another process).
    """
    for backend in list(LIVE_BACKENDS):
        backend._idle = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_connections)


@atexit.register
def _close_at_exit() -> None:
    """Close this process's connections before the interpreter tears sockets down itself."""
    for backend in list(LIVE_BACKENDS):
        with contextlib.suppress(Exception):
            backend.close()


def _load_script(name: str) -> str:
    return importlib.resources.files("glm_guard.backends").joinpath(f"lua/{name}.lua").read_text("utf-8")


def _bulk(value: object) -> bytes:
    """One RESP bulk string, encoded as redis-py would (str as UTF-8, numbers as text)."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, int) and not isinstance(value, bool):
        data = b"%d" % value
    elif isinstance(value, float):
        data = repr(value).encode()
    else:
        raise TypeError(f"cannot send a {type(value).__name__} to Redis")
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _bulks(values: list[Any]) -> bytes:
    return b"".join([_bulk(value) for value in values])


def _watch(current: Any, sock: Any, poller: Any) -> tuple[Any, Any]:
    """A poller on a connection's ``current`` socket, made anew only when the socket changed."""
    if current is None:
        return None, None
    if current is not sock or poller is None:
        poller = select.poll()
        poller.register(current, select.POLLIN)
    return current, poller


def _hash_tag(key: str) -> str:
    """A hash-tag-safe form of ``key``: braces would end the tag early, so hash those."""
    if "{" in key or "}" in key or len(key) > 200:
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return key


class RedisBackend(Backend):
    """State in a Redis server shared by every process that names the same URL.

    ``lease`` is how long a concurrency permit survives its holder's death (live holders
    renew it); ``socket_timeout`` bounds every call to Redis; ``fill_lease`` bounds how long
    other processes wait for one process computing a cache entry.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str | None = None,
        lease: float = 10.0,
        socket_timeout: float | None = None,
        fill_lease: float = 60.0,
    ) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise ConfigurationError(
                "backend", "the redis backend needs redis-py: pip install 'glm-guard[redis]'"
            ) from None
        self._redis = redis
        self._url = url
        self.prefix = get_settings().key_prefix if key_prefix is None else key_prefix
        self.lease = lease
        self.fill_lease = fill_lease
        self._socket_timeout = get_settings().redis_timeout if socket_timeout is None else socket_timeout
        self._lock = threading.Lock()
        self._limiters: dict[str, RedisLimiter] = {}
        self._scripts = {
            name: _load_script(name)
            for name in ("acquire", "release", "renew", "cooldown", "heartbeat", "confirm", "unclaim")
        }
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self._scripts.items()}
        self._evalsha_bulks = {name: b"$7\r\nEVALSHA\r\n" + _bulk(sha) for name, sha in self._shas.items()}
        self._eval_bulks = {name: b"$4\r\nEVAL\r\n" + _bulk(source) for name, source in self._scripts.items()}
        self.health = _Health(url)
        self.degraded_calls = 0
        self._degraded_lock = threading.Lock()
        self._shares: dict[tuple[LimitPolicy, int], LimitPolicy] = {}
        self._pid = -1
        self._reset_process_state()
        LIVE_BACKENDS.add(self)

    def degraded_report(self) -> dict[str, Any]:
        """For ``glm_guard.stats()``: how often this process served calls without Redis."""
        return {
            "backend": mask_url(self._url),
            "available": self.health.available(),
            "outages": self.health.outages,
            "degraded_calls": self.degraded_calls,
        }

    def __repr__(self) -> str:
        return f"<RedisBackend {mask_url(self._url)!r} prefix={self.prefix!r}>"

    # -- connections: one sync pool per process, one async client per event loop ------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._sync_client: Any = None
        self._idle: list[tuple[Any, Any, Any]] = []  # (connection, its socket, a poller on it)
        # Per event loop: the client, the generator that closes it with the loop, idle connections.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any, list[Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._leases = _LeaseKeeper(self)
        self._listener = _ReleaseListener(self)
        self.heartbeat = _Heartbeat(self)

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # never share a socket, a thread or a held lock with the parent
            with self._lock:
                if os.getpid() != self._pid:
                    self._reset_process_state()
                    for limiter in self._limiters.values():
                        limiter.after_fork()

    def _options(self) -> dict[str, Any]:
        return {"socket_timeout": self._socket_timeout, "socket_connect_timeout": self._socket_timeout}

    def sync_client(self) -> Any:
        self._check_fork()
        client = self._sync_client
        if client is None:
            with self._lock:
                if self._sync_client is None:
                    self._sync_client = self._redis.Redis.from_url(self._url, **self._options())
                client = self._sync_client
        return client

    async def async_client(self) -> Any:
        return (await self._async_entry())[0]

    async def _async_entry(self) -> tuple[Any, Any, list[Any]]:
        self._check_fork()
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(loop)
        if entry is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self._url, **self._options())
            closer = _close_with_loop(client)
            await closer.__anext__()  # the loop now owns it and closes it at shutdown_asyncgens
            entry = self._async_clients[loop] = (client, closer, [])
        return entry

    def script(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        """Run a packaged script by SHA; send its source once if the server lacks it (NOSCRIPT)."""
        return self.run_packed(name, 3 + len(keys) + len(args), _bulk(len(keys)) + _bulks(keys) + _bulks(args))

    def run_packed(self, name: str, parts: int, body: bytes) -> Any:
        """Run script ``name`` with ``body``: its key count, keys and arguments, RESP-encoded.

        ``parts`` counts every element of the command (EVALSHA and the SHA included).  The
        admission path packs its body once per policy, so a call costs one concatenation.
        After ``SCRIPT FLUSH``, a restart or a failover the server answers NOSCRIPT without
        running anything; the same body then goes out once more with the script's source.
        """
        head = b"*%d\r\n" % parts
        try:
            try:
                return self._roundtrip(head + self._evalsha_bulks[name] + body)
            except self._redis.exceptions.NoScriptError:
                return self._roundtrip(head + self._eval_bulks[name] + body)
        except self._redis.RedisError as error:
            raise self._wrap(error) from error

    def _roundtrip(self, packed: bytes) -> Any:
        """One request and its reply on a connection of this process's own.

        Scripts bypass redis-py's command machinery and its pool checkout, each of which
        costs more per call on loopback than the script itself: connections wait in a list
        (``pop`` and ``append`` are atomic), taken from the pool once and kept.  One that was
        closed under us while idle (a restart, a timeout) is reopened before anything is
        sent, so nothing is sent twice; one that fails mid-request is disconnected (it
        reconnects on its next use) and the error goes to the caller.
        """
        try:
            connection, sock, poller = self._idle.pop()
        except IndexError:
            connection = self.sync_client().connection_pool.get_connection()
            sock = poller = None
        sock, poller = _watch(connection._sock, sock, poller)
        if poller is not None and poller.poll(0):  # readable while idle: closed by the server
            connection.disconnect()
            sock = poller = None
        try:
            connection.send_packed_command((packed,))
            reply = connection.read_response()
        except self._redis.exceptions.ResponseError:  # an error reply, read in full: link intact
            self._idle.append((connection, sock, poller))
            raise
        except BaseException:
            connection.disconnect()
            self._idle.append((connection, None, None))
            raise
        self._idle.append((connection, sock, poller))
        if self.health.failures:
            self.health.succeeded()
        return reply

    async def script_async(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        body = _bulk(len(keys)) + _bulks(keys) + _bulks(args)
        return await self.run_packed_async(name, 3 + len(keys) + len(args), body)

    async def run_packed_async(self, name: str, parts: int, body: bytes) -> Any:
        head = b"*%d\r\n" % parts
        try:
            try:
                return await self._roundtrip_async(head + self._evalsha_bulks[name] + body)
            except self._redis.exceptions.NoScriptError:
                return await self._roundtrip_async(head + self._eval_bulks[name] + body)
        except self._redis.RedisError as error:
            raise self._wrap(error) from error

    def command(self, *parts: object) -> Any:
        """One plain command (``GET``, ``SET``) on the scripts' connections."""
        try:
            return self._roundtrip(b"*%d\r\n" % len(parts) + _bulks(list(parts)))
        except self._redis.RedisError as error:
            raise self._wrap(error) from error

    async def command_async(self, *parts: object) -> Any:
        try:
            return await self._roundtrip_async(b"*%d\r\n" % len(parts) + _bulks(list(parts)))
        except self._redis.RedisError as error:
            raise self._wrap(error) from error

    async def _roundtrip_async(self, packed: bytes) -> Any:
        """:meth:`_roundtrip` on this event loop's connections (they cannot cross loops)."""
        client, _, idle = await self._async_entry()
        try:
            connection, sock, poller = idle.pop()
        except IndexError:
            connection = await client.connection_pool.get_connection()
            # Bounded below as a whole instead: redis-py would bound the send with wait_for,
            # a task per call (tens of µs), and the read with a timeout of its own.
            connection.socket_timeout = None
            sock = poller = None
        # The loop notices a closed socket only when it next polls it, which a caller that
        # has not yielded since has not let it do: so the socket is asked directly.  One the
        # loop did notice stays readable (end of file), or its transport is closing (a reset).
        writer = connection._writer
        if writer is None:  # not connected yet, or disconnected: the send connects it
            stale, sock, poller = False, None, None
        elif writer.is_closing():
            stale = True
        else:
            sock, poller = _watch(writer.get_extra_info("socket"), sock, poller)
            stale = poller is not None and bool(poller.poll(0))
        if stale:
            await connection.disconnect()  # closed by the server while idle: reopen
            sock = poller = None
        try:
            async with asyncio.timeout(self._socket_timeout):
                await connection.send_packed_command((packed,))
                reply = await connection.read_response()
        except self._redis.exceptions.ResponseError:
            idle.append((connection, sock, poller))
            raise
        except BaseException as error:
            # redis-py disconnects a connection that failed (a cancelled read too); it reconnects
            # on its next use.  One still connected is left to the pool, which closes it.
            if not connection.is_connected:
                idle.append((connection, None, None))
            if isinstance(error, TimeoutError) and not isinstance(error, self._redis.RedisError):
                raise self._redis.exceptions.TimeoutError(f"no reply within {self._socket_timeout} s") from error
            raise
        idle.append((connection, sock, poller))
        if self.health.failures:
            self.health.succeeded()
        return reply

    def _wrap(self, error: Exception) -> BackendError:
        return BackendError(f"redis backend {mask_url(self._url)}: {type(error).__name__}: {error}")

    # -- the Backend interface ---------------------------------------------------------------

    def key(self, key: str, suffix: str) -> str:
        return f"{self.prefix}{{{_hash_tag(key)}}}:{suffix}"

    def limiter(self, key: str) -> RedisLimiter:
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = RedisLimiter(self, key)
            return limiter

    def cache(
        self, namespace: str, *, ttl: float | None, maxsize: int, serializer: str = "json", owner: str = ""
    ) -> RedisCacheStore:
        return RedisCacheStore(self, namespace, ttl, serializer, owner or namespace, maxsize)

    def count_degraded(self) -> None:
        with self._degraded_lock:
            self.degraded_calls += 1

    def share(self, policy: LimitPolicy) -> LimitPolicy:
        """This process's share of ``policy`` while Redis is away: the limit / live processes."""
        processes = self.heartbeat.live_processes
        cached = self._shares.get((policy, processes))
        if cached is None:
            cached = LimitPolicy(
                None if policy.calls is None else max(1, policy.calls // processes),
                policy.period,
                None if policy.concurrency is None else max(1, policy.concurrency // processes),
                policy.on_backend_error,
            )
            self._shares[(policy, processes)] = cached
        return cached

    def close(self) -> None:
        self._leases.stop()
        self._listener.stop()
        self.heartbeat.stop()
        client = self._sync_client
        if client is not None and os.getpid() == self._pid:
            client.close()  # the pool disconnects every connection it gave out, ours too
        self._sync_client = None
        self._idle = []


async def _close_with_loop(client: Any) -> AsyncIterator[None]:
    """An async generator whose finally runs when ``asyncio.run`` shuts the loop down."""
    try:
        yield
    finally:
        await client.aclose()


class _Health:
    """Whether Redis answers; after a failure, calls skip it until a backoff has passed.

    One warning per outage, not per call, and one line when it is back.  While it is down
    no call waits on a socket: the failure policy answers at once.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self.failures = 0
        self.down_until = 0.0
        self.outages = 0

    def available(self) -> bool:
        return self.failures == 0 or time.monotonic() >= self.down_until

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self.down_until = time.monotonic() + min(0.25 * 2 ** (self.failures - 1), 5.0)
            first = self.failures == 1
            if first:
                self.outages += 1
        if first:
            logger.warning(
                "glm_guard: Redis at %s is unreachable (%s); applying each decorator's on_backend_error policy "
                "until it answers again",
                mask_url(self._url),
                type(error.__cause__ or error).__name__,
            )

    def succeeded(self) -> None:
        with self._lock:
            was_down = self.failures > 0
            self.failures = 0
        if was_down:
            logger.warning("glm_guard: Redis at %s answers again; shared limits resume", mask_url(self._url))

    def error(self) -> BackendError:
        return BackendError(f"redis backend {mask_url(self._url)} is unreachable (retrying with backoff)")


class _Heartbeat:
    """Counts the live processes using this Redis, so a degraded process takes its share.

    Every process refreshes its own member of one sorted set every few seconds; members that
    stop refreshing drop out.  The count last seen is kept for when Redis goes away.
    """

    INTERVAL = 2.0

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.live_processes = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="glm-guard-heartbeat", daemon=True)
                    self._thread.start()

    def beat(self) -> None:
        key = self._backend.prefix + "processes"
        ttl_ms = int(self.INTERVAL * 3 * 1000)
        self.live_processes = max(1, int(self._backend.script("heartbeat", [key], [self._member, ttl_ms])))

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._backend.health.available():
                # Also a socket closed under it by close(): a background beat must never raise.
                with contextlib.suppress(Exception):
                    self.beat()
            self._stop.wait(self.INTERVAL)

    def stop(self) -> None:
        self._stop.set()


class _LeaseKeeper:
    """Renews this process's concurrency leases from one daemon thread, every lease / 3.

    Adding and dropping a lease is O(1) on the admission path: a set per leases key, kept
    (empty) between admissions, so a steady caller allocates nothing here.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._held: dict[str, set[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, leases_key: str, token: bytes) -> None:
        with self._lock:
            tokens = self._held.get(leases_key)
            if tokens is None:
                tokens = self._held[leases_key] = set()
            tokens.add(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="glm-guard-leases", daemon=True)
                self._thread.start()

    def discard(self, leases_key: str, token: bytes) -> None:
        with self._lock:
            tokens = self._held.get(leases_key)
            if tokens is not None:
                tokens.discard(token)

    def _loop(self) -> None:
        interval = self._backend.lease / 3
        lease_ms = int(self._backend.lease * 1000)
        while not self._stop.wait(interval):
            with self._lock:
                held = [(key, list(tokens)) for key, tokens in self._held.items() if tokens]
            for leases_key, tokens in held:
                try:
                    self._backend.script("renew", [leases_key], [lease_ms, *tokens])
                except Exception as error:  # keep renewing the others; the lease covers a blip
                    logger.warning("glm_guard: could not renew leases on %s: %s", leases_key, type(error).__name__)

    def stop(self) -> None:
        self._stop.set()


class _ReleaseListener:
    """Wakes this process's waiting heads when any process gives a concurrency slot back.

    One pub/sub connection per process, on a daemon thread, started by the first wait for a
    concurrency slot; without it a waiter would only notice a free slot on its next poll.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._waiters: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, channel: str, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiters[channel] = wake
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="glm-guard-release", daemon=True)
                self._thread.start()

    def unwatch(self, channel: str) -> None:
        with self._lock:
            self._waiters.pop(channel, None)

    def _loop(self) -> None:
        pattern = self._backend.prefix + "*:released"
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._backend.sync_client().pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(pattern)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    channel = message.get("channel")
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    with self._lock:
                        wake = self._waiters.get(channel)
                    if wake is not None:
                        wake()
            except Exception as error:  # waiters still poll; reconnect after a pause
                logger.debug("glm_guard: release listener reconnecting after %s", type(error).__name__)
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def stop(self) -> None:
        self._stop.set()


class _RedisPermit:
    __slots__ = ("_limiter", "_token")

    def __init__(self, limiter: RedisLimiter, token: bytes | None) -> None:
        self._limiter = limiter
        self._token = token

    def release(self) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            self._limiter.give_back(token)


class _AsyncRedisPermit(_RedisPermit):
    __slots__ = ()

    async def release(self) -> None:  # type: ignore[override]
        if self._token is not None:
            token, self._token = self._token, None
            await self._limiter.give_back_async(token)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class _Unlimited:
    """A permit that holds no lease (the ``open`` policy, or no concurrency limit): a no-op."""

    def release(self) -> None:
        return None


class _AsyncUnlimited:
    async def release(self) -> None:
        return None


_UNLIMITED = _Unlimited()
_UNLIMITED_ASYNC = _AsyncUnlimited()
#: The permit of an admission without a concurrency limit: no lease to give back.
_NOTHING_HELD = _Unlimited()
_NOTHING_HELD_ASYNC = _AsyncUnlimited()


def _sleep_holding(permit: _RedisPermit, seconds: float) -> None:
    try:
        time.sleep(seconds)
    except BaseException:
        permit.release()
        raise


class RedisLimiter(Limiter):
    """Rate, concurrency and cooldown for one key, shared through Redis."""

    def __init__(self, backend: RedisBackend, key: str) -> None:
        self.key = key
        self._backend = backend
        self.keys = [backend.key(key, "starts"), backend.key(key, "leases"), backend.key(key, "cooldown")]
        self.channel = backend.key(key, "released")
        self._turnstile = LocalLimiter(f"{key}#turnstile")
        self._local = LocalLimiter(key)  # serves the "local" policy while Redis is away
        self._lease_ms = int(backend.lease * 1000)
        self._keys_bulk = _bulk(len(self.keys)) + _bulks(self.keys)
        self._release_keys_bulk = _bulk(1) + _bulk(self.keys[1])
        self._channel_bulk = _bulk(self.channel)
        self._bodies: dict[LimitPolicy, bytes] = {}
        self._last: tuple[LimitPolicy | None, bytes] = (None, b"")
        self._round_trip = 0.0  # the usual admission round trip, a floor that drifts up slowly

    def __repr__(self) -> str:
        return f"<RedisLimiter {self.key!r}>"

    def after_fork(self) -> None:
        """The parent's threads are gone from a forked child: so are their places and permits."""
        self._turnstile._after_fork()
        self._local._after_fork()

    def _paused(self) -> bool:
        """A cooldown this process set is in force (checked without a round trip).

        A reserved caller re-checks Redis only then: asking on every reserved start would add
        a round trip that, under a crowd, delays starts into the next window.  A cooldown set
        by another process after the reservation was made is not seen by it (known gap).
        """
        return self._local.state.cooldown_until > time.monotonic()

    def _body(self, policy: LimitPolicy, deadline: float | None) -> bytes:
        """The acquire script's key count, keys and limits, RESP-encoded (all but the token).

        Without a deadline they are the same on every call, so they are packed once per
        policy (the last one is kept by identity, which is how decorators pass theirs).
        """
        if deadline is None:
            last = self._last  # one attribute, so another thread never pairs a policy with a wrong body
            if last[0] is policy:
                return last[1]
            body = self._bodies.get(policy)
            if body is None:
                if len(self._bodies) >= 64:  # limits made up per call: do not grow without bound
                    self._bodies.clear()
                body = self._bodies[policy] = self._keys_bulk + _bulk(self._limits(policy, -1))
            self._last = (policy, body)
            return body
        left_ms = max(int((deadline - time.monotonic()) * 1000), 0)
        return self._keys_bulk + _bulk(self._limits(policy, left_ms))

    def _limits(self, policy: LimitPolicy, left_ms: int) -> str:
        window = _window_ms(policy.period) if policy.calls else int(policy.period * 1000)
        return f"{policy.calls or 0} {window} {policy.concurrency or 0} {self._lease_ms} {left_ms}"

    def _admit(self, policy: LimitPolicy, deadline: float | None) -> tuple[list[int], bytes]:
        """One run of the acquire script for a fresh token: its reply and the token."""
        token = _new_token()
        return self._backend.run_packed("acquire", 8, self._body(policy, deadline) + _bulk(token)), token

    async def _admit_async(self, policy: LimitPolicy, deadline: float | None) -> tuple[list[int], bytes]:
        token = _new_token()
        return await self._backend.run_packed_async("acquire", 8, self._body(policy, deadline) + _bulk(token)), token

    def _late(self, policy: LimitPolicy, sent: float, answered: float, wait: float) -> bool:
        """Whether a start given by a request sent at ``sent`` may now be too late to take.

        Redis chose it at some moment after ``sent``; only the part of the round trip beyond
        the usual one counts, so a distant Redis does not make every start late.
        """
        if policy.calls is None:
            return False  # no window to share
        trip = answered - sent
        usual = self._round_trip
        self._round_trip = trip if trip < usual or not usual else usual + (trip - usual) * 0.01
        return time.monotonic() - (sent + wait) > LATE_START_SECONDS + min(usual or trip, trip)

    def _hold(self, policy: LimitPolicy, token: bytes) -> bytes | None:
        """An admission's lease, now renewed by this process; ``None`` without a concurrency limit."""
        if policy.concurrency is None:
            return None
        self._backend._leases.add(self.keys[1], token)
        return token

    def _wait(self, reply: list[int], deadline: float | None, max_wait: float | None) -> float:
        """How long a refused caller sleeps before asking again; raises when past ``deadline``."""
        wait = max(int(reply[1]), 1) / 1000.0
        concurrency_bound = int(reply[2]) == 3
        if concurrency_bound:
            wait = min(wait, CONCURRENCY_POLL_SECONDS)
        if deadline is not None and max_wait is not None:
            left = deadline - time.monotonic()
            if concurrency_bound and left <= 0:
                raise RateLimitTimeout(self.key, max_wait, None)
            if not concurrency_bound and wait > left:
                raise RateLimitTimeout(self.key, max_wait, max_wait - left + wait)
            wait = min(wait, max(left, 0.0))
        return wait

    # Every caller passes a local turnstile first, so one caller per process and key talks to
    # Redis at a time: a crowd of a thousand tasks arriving at once costs Redis one call each,
    # in order, instead of a thousand calls in flight that swamp the process's own loop.
    # A caller with a reserved start leaves the turnstile before it sleeps.

    # The failure policy, decided in two steps shared by both flavours: before asking Redis
    # (is it worth trying?) and after it failed (give up, or serve the call without it).

    def _try_shared(self, policy: LimitPolicy) -> bool:
        self._backend._check_fork()
        if self._backend.health.available():
            return True
        if policy.on_backend_error == "closed":
            raise self._backend.health.error()
        return False

    def _shared_failed(self, policy: LimitPolicy, error: BackendError) -> None:
        self._backend.health.failed(error)
        if policy.on_backend_error == "closed":
            raise error

    def acquire(self, policy: LimitPolicy, max_wait: float | None) -> Permit:
        if self._try_shared(policy):
            try:
                return self._acquire_shared(policy, max_wait)
            except BackendError as error:
                self._shared_failed(policy, error)
        self._backend.count_degraded()
        if policy.on_backend_error == "open":
            return _UNLIMITED
        return self._local.acquire(self._backend.share(policy), max_wait)

    async def acquire_async(self, policy: LimitPolicy, max_wait: float | None) -> AsyncPermit:
        if self._try_shared(policy):
            try:
                return await self._acquire_shared_async(policy, max_wait)
            except BackendError as error:
                self._shared_failed(policy, error)
        self._backend.count_degraded()
        if policy.on_backend_error == "open":
            return _UNLIMITED_ASYNC
        return await self._local.acquire_async(self._backend.share(policy), max_wait)

    def _acquire_shared(self, policy: LimitPolicy, max_wait: float | None, patience: int = 3) -> Permit:
        """Admission through Redis; ``patience``: how many more late starts to give back."""
        self._backend.heartbeat.start()
        deadline = None if max_wait is None else time.monotonic() + max_wait
        turn: Permit | None = self._turnstile.acquire(_TURNSTILE, max_wait)
        watching = False
        try:
            while True:
                sent = time.monotonic()
                reply, token = self._admit(policy, deadline)
                answered = time.monotonic()
                code = int(reply[0])
                if code:  # 1: admitted now; 2: admitted with a start reserved reply[1] ms from now
                    held = self._hold(policy, token)
                    if code == 1 and (patience <= 0 or not self._late(policy, sent, answered, 0.0)):
                        return _NOTHING_HELD if held is None else _RedisPermit(self, held)
                    permit = _RedisPermit(self, held)
                    if turn is not None:  # the next local waiter may reserve its own start
                        if watching:
                            self._backend._listener.unwatch(self.channel)
                            watching = False
                        turn.release()
                        turn = None
                    wait = int(reply[1]) / 1000.0 if code == 2 else 0.0
                    if wait:
                        _sleep_holding(permit, wait)
                    late = patience > 0 and (code == 1 or self._late(policy, sent, answered, wait))
                    if late or (wait and self._paused()):
                        try:
                            paused_ms = int(self._backend.script("confirm", self.keys, [token, "1" if late else "0"]))
                        except BaseException:  # the start stays ours: give it back the usual way
                            permit.release()
                            raise
                        if paused_ms >= 0:  # gave its slot back: queue again (after any cooldown)
                            self._backend._leases.discard(self.keys[1], token)
                            time.sleep(paused_ms / 1000.0)
                            return self._acquire_shared(
                                policy, _remaining(deadline), patience - 1 if late else patience
                            )
                    return permit
                wait = self._wait(reply, deadline, max_wait)
                if int(reply[2]) == 3:
                    released = threading.Event()
                    self._backend._listener.watch(self.channel, released.set)
                    watching = True
                    released.wait(wait)
                else:
                    time.sleep(wait)
        finally:
            if turn is not None:
                if watching:
                    self._backend._listener.unwatch(self.channel)
                turn.release()

    async def _acquire_shared_async(
        self, policy: LimitPolicy, max_wait: float | None, patience: int = 3
    ) -> AsyncPermit:
        self._backend.heartbeat.start()
        deadline = None if max_wait is None else time.monotonic() + max_wait
        turn: AsyncPermit | None = await self._turnstile.acquire_async(_TURNSTILE, max_wait)
        watching = False
        try:
            while True:
                sent = time.monotonic()
                reply, token = await self._admit_async(policy, deadline)
                answered = time.monotonic()
                code = int(reply[0])
                if code:
                    held = self._hold(policy, token)
                    if code == 1 and (patience <= 0 or not self._late(policy, sent, answered, 0.0)):
                        return _NOTHING_HELD_ASYNC if held is None else _AsyncRedisPermit(self, held)
                    permit = _AsyncRedisPermit(self, held)
                    if turn is not None:  # the next local waiter may reserve its own start
                        if watching:
                            self._backend._listener.unwatch(self.channel)
                            watching = False
                        await turn.release()
                        turn = None
                    wait = int(reply[1]) / 1000.0 if code == 2 else 0.0
                    if wait:
                        try:
                            await asyncio.sleep(wait)
                        except BaseException:
                            await permit.release()
                            raise
                    late = patience > 0 and (code == 1 or self._late(policy, sent, answered, wait))
                    if late or (wait and self._paused()):
                        args = [token, "1" if late else "0"]
                        try:
                            paused_ms = int(await self._backend.script_async("confirm", self.keys, args))
                        except BaseException:  # the start stays ours: give it back the usual way
                            await permit.release()
                            raise
                        if paused_ms >= 0:  # gave its slot back: queue again (after any cooldown)
                            self._backend._leases.discard(self.keys[1], token)
                            await asyncio.sleep(paused_ms / 1000.0)
                            return await self._acquire_shared_async(
                                policy, _remaining(deadline), patience - 1 if late else patience
                            )
                    return permit
                wait = self._wait(reply, deadline, max_wait)
                if int(reply[2]) == 3:
                    watching = True
                    await self._wait_for_release(wait)
                else:
                    await asyncio.sleep(wait)
        finally:
            if turn is not None:
                if watching:
                    self._backend._listener.unwatch(self.channel)
                await turn.release()

    async def _wait_for_release(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        released: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, released)

        self._backend._listener.watch(self.channel, wake)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await released

    # Giving back and cooling down never raise into the caller's result: if Redis is away
    # the lease simply expires, and the pause is kept in this process instead.

    def _release_body(self, token: bytes) -> bytes:
        return self._release_keys_bulk + _bulk(token) + self._channel_bulk

    def give_back(self, token: bytes) -> None:
        self._backend._leases.discard(self.keys[1], token)
        if self._backend.health.available():
            try:
                self._backend.run_packed("release", 6, self._release_body(token))
            except BackendError as error:
                self._backend.health.failed(error)

    async def give_back_async(self, token: bytes) -> None:
        self._backend._leases.discard(self.keys[1], token)
        if self._backend.health.available():
            try:
                # Shielded: a task cancelled while holding a permit still gives it back at once.
                await asyncio.shield(self._backend.run_packed_async("release", 6, self._release_body(token)))
            except BackendError as error:
                self._backend.health.failed(error)

    def cooldown(self, seconds: float) -> None:
        self._local.cooldown(seconds)
        if self._backend.health.available():
            try:
                self._backend.script("cooldown", [self.keys[2]], [int(seconds * 1000)])
            except BackendError as error:
                self._backend.health.failed(error)

    async def cooldown_async(self, seconds: float) -> None:
        self._local.cooldown(seconds)
        if self._backend.health.available():
            try:
                await self._backend.script_async("cooldown", [self.keys[2]], [int(seconds * 1000)])
            except BackendError as error:
                self._backend.health.failed(error)


class RedisCacheStore(CacheStore):
    """Entries shared by every process; JSON by default, signed pickle only on request."""

    def __init__(
        self,
        backend: RedisBackend,
        namespace: str,
        ttl: float | None,
        serializer: str = "json",
        owner: str = "",
        maxsize: int = 1024,
    ) -> None:
        self._backend = backend
        digest = hashlib.blake2b(namespace.encode(), digest_size=10).hexdigest()
        self._prefix = f"{backend.prefix}cache:{KEY_VERSION}:{digest}:"
        self._ttl_ms = None if ttl is None else max(int(ttl * 1000), 1)
        self._name = owner or namespace
        self._serializer = serializer
        self._secret = get_settings().cache_secret.encode() if serializer == "pickle" else b""
        self._warned = False
        self.corrupt_entries = 0
        self._local = LocalCacheStore(ttl, maxsize)
        self._claims: dict[str, bytes] = {}  # digest -> our fill token, for a compare-and-delete

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, value: object) -> bytes | None:
        if self._serializer == "pickle":
            try:
                body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # the answer was paid for: return it, just do not cache it
                self._warn_not_cached(value, "pickle")
                return None
            return _PICKLE_TAG + hmac.new(self._secret, body, hashlib.sha256).digest() + body
        if not _json_native(value, 0):
            self._warn_not_cached(value, "JSON")
            return None
        return _JSON_TAG + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

    def _warn_not_cached(self, value: object, form: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "glm_guard: %s returned a %s, which %s cannot store faithfully; its results are not cached",
                self._name,
                type(value).__qualname__,
                form,
            )

    def decode(self, raw: bytes | None) -> tuple[bool, object]:
        if raw is None:
            return False, None
        try:
            if raw.startswith(_JSON_TAG):
                return True, json.loads(raw[len(_JSON_TAG) :])
            if raw.startswith(_PICKLE_TAG) and self._serializer == "pickle":
                signature, body = raw[len(_PICKLE_TAG) : len(_PICKLE_TAG) + 32], raw[len(_PICKLE_TAG) + 32 :]
                expected = hmac.new(self._secret, body, hashlib.sha256).digest()
                if hmac.compare_digest(signature, expected):
                    return True, pickle.loads(body)  # signed with our secret: written by us
        except Exception:  # a renamed class, a failing __setstate__, deep JSON: all a miss
            pass
        self.corrupt_entries += 1  # corrupt, truncated, foreign or unsigned: a miss
        return False, None

    # -- the CacheStore interface ------------------------------------------------------------
    # While Redis is away the store keeps working from a cache in this process: a miss
    # costs one call to the provider, never an error in the caller's face.

    def _shared(self) -> bool:
        return self._backend.health.available()

    def _down(self, error: BackendError) -> None:
        self._backend.health.failed(error)
        self._backend.count_degraded()

    def _set_args(self, key: str, data: bytes) -> tuple[object, ...]:
        if self._ttl_ms is None:
            return (b"SET", self._prefix + key, data)
        return (b"SET", self._prefix + key, data, b"PX", self._ttl_ms)

    def _claim_args(self, key: str, token: bytes) -> tuple[object, ...]:
        return (b"SET", self._prefix + key + ":fill", token, b"NX", b"PX", int(self._backend.fill_lease * 1000))

    def get(self, key: str) -> tuple[bool, object]:
        if self._shared():
            try:
                return self.decode(self._backend.command(b"GET", self._prefix + key))
            except BackendError as error:
                self._down(error)
        return self._local.get(key)

    def set(self, key: str, value: object) -> None:
        data = self.encode(value)
        if data is None:
            return
        if self._shared():
            try:
                self._backend.command(*self._set_args(key, data))
                return
            except BackendError as error:
                self._down(error)
        self._local.set(key, value)

    async def get_async(self, key: str) -> tuple[bool, object]:
        if self._shared():
            try:
                return self.decode(await self._backend.command_async(b"GET", self._prefix + key))
            except BackendError as error:
                self._down(error)
        return self._local.get(key)

    async def set_async(self, key: str, value: object) -> None:
        data = self.encode(value)
        if data is None:
            return
        if self._shared():
            try:
                await self._backend.command_async(*self._set_args(key, data))
                return
            except BackendError as error:
                self._down(error)
        self._local.set(key, value)

    # -- one process computes an entry, the others wait for it --------------------------------

    def claim(self, key: str) -> bool:
        if not self._shared():
            return True
        token = _new_token()
        try:
            won = self._backend.command(*self._claim_args(key, token)) is not None  # nil: someone else's
        except BackendError as error:
            self._down(error)
            return True
        if won:
            self._claims[key] = token
        return won

    def unclaim(self, key: str) -> None:
        token = self._claims.pop(key, None)
        if token is not None and self._shared():
            try:
                self._backend.script("unclaim", [self._prefix + key + ":fill"], [token])
            except BackendError as error:  # the claim expires by itself
                self._down(error)

    async def claim_async(self, key: str) -> bool:
        if not self._shared():
            return True
        token = _new_token()
        try:
            won = await self._backend.command_async(*self._claim_args(key, token)) is not None
        except BackendError as error:
            self._down(error)
            return True
        if won:
            self._claims[key] = token
        return won

    async def unclaim_async(self, key: str) -> None:
        token = self._claims.pop(key, None)
        if token is not None and self._shared():
            try:
                await self._backend.script_async("unclaim", [self._prefix + key + ":fill"], [token])
            except BackendError as error:
                self._down(error)


def _json_native(value: object, depth: int) -> bool:
    """Whether JSON gives ``value`` back equal and of the same types (no tuples, no sets)."""
    if depth > 64:
        return False
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if type(value) is list:
        return all(_json_native(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _json_native(v, depth + 1) for k, v in value.items())
    return False
