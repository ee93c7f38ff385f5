"""The stats and alert states every process shares through Redis (the ``SharedStats`` of a backend).

Key layout, for prefix ``P``::

    P{stats}:m:{minute}   HASH  "{key}|{field}" -> count, one hash per UTC minute (unix time // 60),
                                expires 24 h + 10 min after the minute ends
    P{stats}:total        HASH  the same fields summed since first use (expires 30 days idle)
    P{stats}:alerts       HASH  alert name -> "1" while firing (expires 2 h after the last check)
    P{stats}:limits       HASH  key -> "N M": the fixed ``concurrency=N`` under which a process
                                admits the key, rewritten by each of its flushes at unix minute M
                                (the last flush wins; read for as long as the minute hashes live,
                                and the hash expires 24 h + 10 min after the last flush that wrote it)

:meth:`~RedisSharedStats.add` is one MULTI/EXEC over several of these keys, which Redis Cluster
runs only when every key is in one slot: hence the one ``{stats}`` hash tag.  A transaction
Redis refused (a command refused as it was queued) or that got no reply is raised, and the
recorder sends it again whole; once it ran, a command that failed inside it (a planted key of
another type) spoils only its own key and is logged, never sent again, which would count the
rest twice.  A reply lost on its way back after EXEC ran is the one case counted twice.

Whatever the prefix holds, every stats key starts with the same text up to the end of the
``{stats}`` tag, so they all share one slot.  Releases before the tag wrote ``Pstats:m:{minute}``
and ``Pstats:total``; those are still read (never written), so a fleet upgrading process by
process loses no counts from the views until they expire.

The fixed limits travel with the counters so that a monitor in a process of its own (``glm-guard
monitor``) can draw calls in flight against a limit only the workers' decorators know.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import redis

from .._base import Counters, SharedStats
from ._connections import Connections

#: How far apart the fleet's clocks may be and still agree on which minutes are live.
CLOCK_SKEW_MINUTES: Final = 10
#: A minute's hash outlives the minute by the day the views read, plus slack for skewed clocks.
MINUTE_TTL_SECONDS: Final = 24 * 60 * 60 + CLOCK_SKEW_MINUTES * 60
TOTAL_TTL_SECONDS: Final = 30 * 24 * 3600
ALERTS_TTL_SECONDS: Final = 2 * 3600
#: Beyond this a stored fixed limit is not read: no Redis limit is anywhere near it.
MAX_FIXED_LIMIT: Final = 10**9
#: A ``limits`` field as a flush writes it: the limit and the unix minute, in ASCII digits only.
_FIXED_LIMIT_FIELD: Final = re.compile(r"([0-9]{1,10}) ([0-9]{1,12})")

logger = logging.getLogger("glm_guard")


class RedisSharedStats(SharedStats):
    """Counters as ``HINCRBY``s on per-minute hashes and a running total, on the backend's pool."""

    name = "redis"

    def __init__(self, connections: Connections, prefix: str, fixed_limits: Callable[[], Mapping[str, int]]) -> None:
        """``fixed_limits`` gives this process's fixed limits by key, written with every flush."""
        self._connections = connections
        self._prefix = prefix
        self._fixed_limits_here = fixed_limits
        self._spoilt_flush_logged = False

    def _key(self, suffix: str) -> str:
        return f"{self._prefix}{{stats}}:{suffix}"

    def _keys_read(self, suffix: str) -> tuple[str, str]:
        """The key and the one releases before the hash tag wrote (read until it expires)."""
        return self._key(suffix), f"{self._prefix}stats:{suffix}"

    def add(self, minutes: Mapping[int, Counters]) -> None:
        totals: Counters = {}
        for per_key in minutes.values():
            _merge(totals, per_key)
        now = int(time.time() // 60)
        limits = {key: f"{limit} {now}" for key, limit in self._fixed_limits_here().items()}

        def write(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)  # one slot, one EXEC: raised only if it never ran
            for minute, per_key in minutes.items():
                name = self._key(f"m:{minute}")
                _increments(pipe, name, per_key)
                pipe.expireat(name, (minute + 1) * 60 + MINUTE_TTL_SECONDS)
            total = self._key("total")
            _increments(pipe, total, totals)
            pipe.expire(total, TOTAL_TTL_SECONDS)
            if limits:
                pipe.hset(self._key("limits"), mapping=limits)
                pipe.expire(self._key("limits"), MINUTE_TTL_SECONDS)
            return list(pipe.execute(raise_on_error=False))

        failed = [reply for reply in self._connections.call(write) if isinstance(reply, redis.ResponseError)]
        if failed and not self._spoilt_flush_logged:
            logger.warning(
                "glm_guard: %d stats command(s) failed inside a flush that otherwise went through "
                "(%s); a key under the %r prefix holds what glm_guard did not write there",
                len(failed),
                getattr(failed[0], "status_code", None) or type(failed[0]).__name__,
                self._prefix,
            )
        self._spoilt_flush_logged = bool(failed)

    def totals(self) -> Counters:
        return self._read(["total"])

    def window(self, first_minute: int, last_minute: int) -> Counters:
        return self._read([f"m:{minute}" for minute in range(first_minute, last_minute + 1)])

    def _read(self, suffixes: list[str]) -> Counters:
        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)  # on a Cluster, one batch per node
            for suffix in suffixes:
                for name in self._keys_read(suffix):
                    pipe.hgetall(name)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies:  # a planted key of another type spoils only itself; other errors stand
                if isinstance(reply, Exception) and not _wrong_type(reply):
                    raise reply
            return [reply for reply in replies if isinstance(reply, dict)]

        return _parse(self._connections.call(read))

    def fixed_limits(self) -> dict[str, int]:
        """The fixed limit each key was last admitted under anywhere in the fleet, as the last flush
        that wrote it said, for keys written within the day the views read."""
        raw = self._connections.call(lambda client: client.hgetall(self._key("limits")))
        now = int(time.time() // 60)
        found = {}
        for key, value in raw.items():
            with contextlib.suppress(UnicodeDecodeError):
                limit = _fixed_limit(value, now)
                if limit is not None:
                    found[_text(key)] = limit
        return found

    def reachable(self) -> bool:
        try:
            return bool(self._connections.call(lambda client: client.ping()))
        except Exception:
            return False

    def firing_alerts(self) -> set[str]:
        name = self._key("alerts")

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.expire(name, ALERTS_TTL_SECONDS)  # kept while some process still checks
            pipe.hkeys(name)
            return list(pipe.execute())

        return {_text(field) for field in self._connections.call(read)[1]}

    def start_alert(self, name: str) -> bool:
        return bool(self._connections.call(lambda client: client.hsetnx(self._key("alerts"), name, "1")))

    def end_alert(self, name: str) -> bool:
        return bool(self._connections.call(lambda client: client.hdel(self._key("alerts"), name)))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _wrong_type(reply: Exception) -> bool:
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE")


def _fixed_limit(raw: object, now_minute: int) -> int | None:
    """A ``limits`` field as :meth:`RedisSharedStats.add` writes it, else ``None``: text planted in
    the store never reaches a view as a number, a limit no process wrote for a day is gone, and
    one dated further ahead than clocks drift (it would never age out) is not believed."""
    written = _FIXED_LIMIT_FIELD.fullmatch(_text(raw))  # UnicodeDecodeError for bytes that are not UTF-8
    if written is None:
        return None
    limit, minute = int(written[1]), int(written[2])
    oldest = now_minute - MINUTE_TTL_SECONDS // 60
    newest = now_minute + CLOCK_SKEW_MINUTES  # a writer's clock a little ahead is believed
    return limit if 1 <= limit <= MAX_FIXED_LIMIT and oldest <= minute <= newest else None


def _merge(into: Counters, per_key: Counters) -> None:
    for key, fields in per_key.items():
        mine = into.setdefault(key, {})
        for field, value in fields.items():
            mine[field] = mine.get(field, 0) + value


def _increments(pipe: Any, name: str, per_key: Counters) -> None:
    for key, fields in per_key.items():
        for field, value in fields.items():
            if value:
                pipe.hincrby(name, f"{key}|{field}", value)


def _parse(hashes: Iterable[Mapping[Any, Any]]) -> Counters:
    """Fields ``key|counter`` of every hash, summed by key and counter; a field whose name is not
    text or whose value is not a whole number was not written by a flush, and is passed over."""
    result: Counters = {}
    for raw in hashes:
        for field, value in raw.items():
            try:
                key, _, counter = _text(field).rpartition("|")
                count = int(value)
            except ValueError:  # UnicodeDecodeError too
                continue
            if key:
                fields = result.setdefault(key, {})
                fields[counter] = fields.get(counter, 0) + count
    return result
