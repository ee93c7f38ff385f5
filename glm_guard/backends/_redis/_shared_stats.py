"""The stats and alert states every process shares through Redis (the ``SharedStats`` of a backend).

Key layout, for prefix ``P``::

    P{stats}:m:{minute}   HASH  "{key}|{field}" -> count, one hash per UTC minute (unix time // 60),
                                expires 24 h + 10 min after the minute ends
    P{stats}:total        HASH  the same fields summed since first use (expires 30 days idle)
    P{stats}:alerts       HASH  alert name -> "1" while firing (expires 2 h after the last check)

:meth:`~RedisSharedStats.add` is one MULTI/EXEC over several of these keys (all of a flush or
none, so a retry never counts twice), which Redis Cluster runs only when every key is in one
slot: hence the one ``{stats}`` hash tag.  Whatever the prefix holds, every stats key starts
with the same text up to the end of that tag, so they all share it.  Releases before the tag
wrote ``Pstats:m:{minute}`` and ``Pstats:total``; those are still read (never written), so a
fleet upgrading process by process loses no counts from the views until they expire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .._base import Counters, SharedStats
from ._connections import Connections

#: A minute's hash outlives the minute by the day the views read, plus slack for skewed clocks.
MINUTE_TTL_SECONDS: Final = 24 * 60 * 60 + 600
TOTAL_TTL_SECONDS: Final = 30 * 24 * 3600
ALERTS_TTL_SECONDS: Final = 2 * 3600


class RedisSharedStats(SharedStats):
    """Counters as ``HINCRBY``s on per-minute hashes and a running total, on the backend's pool."""

    name = "redis"

    def __init__(self, connections: Connections, prefix: str) -> None:
        self._connections = connections
        self._prefix = prefix

    def _key(self, suffix: str) -> str:
        return f"{self._prefix}{{stats}}:{suffix}"

    def _keys_read(self, suffix: str) -> tuple[str, str]:
        """The key and the one releases before the hash tag wrote (read until it expires)."""
        return self._key(suffix), f"{self._prefix}stats:{suffix}"

    def add(self, minutes: Mapping[int, Counters]) -> None:
        totals: Counters = {}
        for per_key in minutes.values():
            _merge(totals, per_key)

        def write(client: Any) -> None:
            pipe = client.pipeline(transaction=True)  # all of a flush or none: a retry never double counts
            for minute, per_key in minutes.items():
                name = self._key(f"m:{minute}")
                _increments(pipe, name, per_key)
                pipe.expireat(name, (minute + 1) * 60 + MINUTE_TTL_SECONDS)
            total = self._key("total")
            _increments(pipe, total, totals)
            pipe.expire(total, TOTAL_TTL_SECONDS)
            pipe.execute()

        self._connections.call(write)

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
            return list(pipe.execute())

        return _parse(self._connections.call(read))

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


def _parse(hashes: list[Mapping[Any, Any]]) -> Counters:
    """Fields ``key|counter`` of every hash, summed by key and counter."""
    result: Counters = {}
    for raw in hashes:
        for field, value in raw.items():
            key, _, counter = _text(field).rpartition("|")
            if key:
                fields = result.setdefault(key, {})
                fields[counter] = fields.get(counter, 0) + int(value)
    return result
