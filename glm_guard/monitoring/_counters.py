"""Counters per stats key and per minute, folded from events, that add up across processes.

A counter set is a flat ``{field: int}`` dict with named fields: counts, durations summed in
integer microseconds, errors as ``err.{kind}[.{code}]`` and histogram bucket counts
(``lat.42``).  Sets from any number of processes, or of minutes, merge by adding, which is
what lets a shared store sum the whole fleet with plain increments.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final

from ..backends._base import Counters
from . import _histogram
from ._events import Alert, AttemptEvent, CacheEvent, CallEvent, GuardEvent, LimitChanged, RetryEvent, WaitEvent

__all__ = ["RETENTION_MINUTES", "Counters", "ProcessCounters", "fold", "merge"]

#: Minutes of per-minute counters kept (here and in a shared store); the largest window.
RETENTION_MINUTES: Final = 24 * 60
#: A permit granted faster than this was not waited for (a Redis round trip is ~0.2 ms).
WAIT_THRESHOLD: Final = 0.001
_MAX_CODES: Final = 64  # distinct error codes kept apart; a flood of odd codes must not grow the counters
_OUTCOME_FIELD: Final = {"success": "successes", "fallback": "fallbacks", "error": "failures"}


class _Tally:
    """One key's counters for one minute while a batch of events is folded."""

    __slots__ = ("attempt_seconds", "call_seconds", "counts", "wait_seconds")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.call_seconds: list[float] = []
        self.attempt_seconds: list[float] = []
        self.wait_seconds: list[float] = []

    def add(self, event: GuardEvent, codes: dict[str, str]) -> None:
        counts = self.counts
        if isinstance(event, CallEvent):
            counts["calls"] += 1
            counts[_OUTCOME_FIELD[event.outcome]] += 1
            self.call_seconds.append(event.seconds)
        elif isinstance(event, AttemptEvent):
            self.attempt_seconds.append(event.seconds)
            if event.error_kind is not None:
                counts[_error_field(event.error_kind, event.code, codes)] += 1
            if event.total_tokens is not None:  # most answers carry no usage
                counts["tokens_prompt"] += event.prompt_tokens or 0
                counts["tokens_completion"] += event.completion_tokens or 0
                counts["tokens_total"] += event.total_tokens
        elif isinstance(event, WaitEvent):
            if event.timed_out:
                counts["wait_timeouts"] += 1
            elif event.seconds >= WAIT_THRESHOLD:
                self.wait_seconds.append(event.seconds)
        elif isinstance(event, RetryEvent):
            counts["retries_exhausted" if event.exhausted else "retries"] += 1
        elif isinstance(event, CacheEvent):
            counts["cache_hits" if event.hit else "cache_misses"] += 1

    def fields(self) -> dict[str, int]:
        result = {name: value for name, value in self.counts.items() if value}
        for count_name, sum_name, prefix, seconds in (
            ("calls", "lat_us", "lat.", self.call_seconds),
            ("attempts", "att_us", "att.", self.attempt_seconds),
            ("waits", "wait_us", "wait.", self.wait_seconds),
        ):
            if not seconds:
                continue
            if count_name != "calls":  # calls are counted with their outcome
                result[count_name] = len(seconds)
            result[sum_name] = round(sum(seconds) * 1e6)
            for index, value in Counter(map(_histogram.bucket, seconds)).items():
                result[f"{prefix}{index}"] = value
        return result


def _error_field(kind: str, code: str | None, codes: dict[str, str]) -> str:
    if kind not in ("rate_limit", "permanent"):
        return f"err.{kind}"
    raw = code or "unknown"
    name = codes.get(raw)
    if name is None:
        plain = 0 < len(raw) <= 40 and raw.isascii() and all(ch.isalnum() or ch in "_.-" for ch in raw)
        name = raw if plain and len(codes) < _MAX_CODES else "unknown"
        if len(codes) < _MAX_CODES:
            codes[raw] = name
    return f"err.{kind}.{name}"


def fold(events: Iterable[GuardEvent], codes: dict[str, str]) -> dict[int, Counters]:
    """Counters per UTC minute and stats key from ``events``.

    Alerts are not counted, nor limit changes: a learned limit is a value, not a count, and the
    views read it from the backend that holds it (on Redis only the changing process sees the event).
    """
    tallies: dict[int, dict[str, _Tally]] = {}
    for event in events:
        if isinstance(event, (Alert, LimitChanged)):
            continue
        minute = int(event.at // 60)
        per_key = tallies.setdefault(minute, {})
        tally = per_key.get(event.key)
        if tally is None:
            tally = per_key[event.key] = _Tally()
        tally.add(event, codes)
    return {minute: {key: tally.fields() for key, tally in per_key.items()} for minute, per_key in tallies.items()}


def add_fields(into: dict[str, int], source: Mapping[str, int]) -> None:
    for name, value in source.items():
        into[name] = into.get(name, 0) + value


def merge(into: Counters, source: Mapping[str, Mapping[str, int]]) -> None:
    for key, fields in source.items():
        target = into.get(key)
        if target is None:
            into[key] = dict(fields)
        else:
            add_fields(target, fields)


def total(per_key: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    result: dict[str, int] = {}
    for fields in per_key.values():
        add_fields(result, fields)
    return result


class ProcessCounters:
    """This process's counters: one set per minute for the retention, and the running totals."""

    name = "process"

    def __init__(self) -> None:
        self.minutes: dict[int, Counters] = {}
        self.lifetime: Counters = {}
        self._lock = threading.Lock()  # the stats thread adds while any thread reads

    def add(self, batch: Mapping[int, Counters], now_minute: int) -> None:
        with self._lock:
            for minute, per_key in batch.items():
                merge(self.minutes.setdefault(minute, {}), per_key)
                merge(self.lifetime, per_key)
            oldest = now_minute - RETENTION_MINUTES
            for minute in [m for m in self.minutes if m < oldest]:
                del self.minutes[minute]

    def totals(self) -> Counters:
        result: Counters = {}
        with self._lock:
            merge(result, self.lifetime)
        return result

    def window(self, first_minute: int, last_minute: int) -> Counters:
        result: Counters = {}
        with self._lock:
            for minute, per_key in self.minutes.items():
                if first_minute <= minute <= last_minute:
                    merge(result, per_key)
        return result
