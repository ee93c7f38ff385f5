"""One redis-py client for what a URL names: a server, the primary Sentinel watches, or a Cluster.

Only redis-py's public constructors: ``Redis.from_url`` for a server (TCP, TLS, Unix socket),
``Sentinel(...).master_for`` for Sentinel's primary (never a replica: an admission must read
every write before it), ``RedisCluster.from_url`` with the other nodes as startup nodes; and
their asyncio twins.  redis-py reads no Sentinel or Cluster URL, so
:func:`~glm_guard._redis_url.redis_target` cuts those into one plain URL per node, which
redis-py's ``parse_url`` reads.  Each client retries a request once, at once, on a connection
error only (see :class:`~glm_guard.backends._redis._connections.Connections`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from ..._redis_url import RedisTarget

__all__ = ["AsyncClient", "Client", "open_async", "open_sync"]

Client = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_RETRIED = (redis.ConnectionError,)
#: What a URL's query and credentials give a sentinel: it has no database, and it gets the
#: credentials too (the same user on sentinels and data nodes, as ``limits`` does).
_FOR_SENTINELS = ("username", "password", "protocol")


class Opened(NamedTuple):
    client: Client
    close: Callable[[], None]  # closes the client and whatever it needed (the sentinels' connections)


class OpenedAsync(NamedTuple):
    client: AsyncClient
    aclose: Callable[[], Awaitable[None]]


def _address(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "", parsed.port or 6379


def _sentinel_options(target: RedisTarget) -> tuple[list[tuple[str, int]], dict[str, Any], dict[str, Any]]:
    """The sentinels' addresses, what the primary's connections take, and what the sentinels' take."""
    options: dict[str, Any] = parse_url(target.urls[0])  # type: ignore[no-untyped-call]  # credentials and query: the same in every node's URL
    for name in ("host", "port"):
        options.pop(name, None)
    return [_address(url) for url in target.urls], options, {k: v for k, v in options.items() if k in _FOR_SENTINELS}


def open_sync(target: RedisTarget, timeout: float) -> Opened:
    """A sync client with its pool, for every thread of this process."""
    timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    retry = Retry(NoBackoff(), 1, _RETRIED)
    if target.kind == "sentinel":
        sentinels, options, own = _sentinel_options(target)
        sentinel = redis.sentinel.Sentinel(sentinels, sentinel_kwargs={**own, **timeouts}, **options, **timeouts)
        primary = sentinel.master_for(target.service, retry=retry)

        def close() -> None:
            primary.close()
            sentinel.close()

        return Opened(primary, close)
    if target.kind == "cluster":
        others = [redis.cluster.ClusterNode(*_address(url)) for url in target.urls[1:]]  # type: ignore[no-untyped-call]
        cluster = redis.cluster.RedisCluster.from_url(target.urls[0], startup_nodes=others, retry=retry, **timeouts)
        return Opened(cluster, cluster.close)
    client = redis.Redis.from_url(target.urls[0], retry=retry, **timeouts)
    return Opened(client, client.close)


def open_async(target: RedisTarget, timeout: float) -> OpenedAsync:
    """An async client for the running event loop.

    No socket_timeout: redis-py would bound every send with ``asyncio.wait_for``, a task (an
    extra turn of the loop) per request.  The caller bounds each request as a whole instead.
    """
    retry = AsyncRetry(NoBackoff(), 1, _RETRIED)
    if target.kind == "sentinel":
        sentinels, options, own = _sentinel_options(target)
        sentinel = redis.asyncio.sentinel.Sentinel(
            sentinels, sentinel_kwargs={**own, "socket_timeout": timeout, "socket_connect_timeout": timeout}, **options
        )
        primary = sentinel.master_for(target.service, retry=retry, socket_connect_timeout=timeout)

        async def aclose() -> None:
            await primary.aclose()
            for each in sentinel.sentinels:
                await each.aclose()

        return OpenedAsync(primary, aclose)
    if target.kind == "cluster":
        others = [redis.asyncio.cluster.ClusterNode(*_address(url)) for url in target.urls[1:]]
        cluster = redis.asyncio.cluster.RedisCluster.from_url(
            target.urls[0], startup_nodes=others, retry=retry, socket_timeout=None, socket_connect_timeout=timeout
        )
        return OpenedAsync(cluster, cluster.aclose)
    client = redis.asyncio.Redis.from_url(target.urls[0], retry=retry, socket_connect_timeout=timeout)
    return OpenedAsync(client, client.aclose)
