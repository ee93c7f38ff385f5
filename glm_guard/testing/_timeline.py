"""A capacity that changes over time, as GLM's per-key concurrency limit does at peak hours.

Pure functions of elapsed seconds, so a benchmark can ask the same object the simulator
obeys what the "oracle" capacity was at any moment, with no clock of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeAlias

__all__ = ["CapacityFunction", "CapacityTimeline", "TimelineSpec"]

#: Elapsed seconds -> requests allowed in flight (``None`` = unlimited).
CapacityFunction: TypeAlias = Callable[[float], "int | None"]


def _check_capacity(value: object, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{what} must be an int >= 1 or None (unlimited), got {value!r}")
    return value


class CapacityTimeline:
    """Per-(key, model) concurrency as a function of seconds since the timeline started.

    ``phases`` is a list of ``(concurrency, seconds)``: the first phase lasts its seconds,
    then the next, and the last one holds forever (or, with ``cycle=True``, the list starts
    again). A callable ``f(elapsed_s) -> int | None`` is used as is and must be fast: the
    simulator asks it at every admission.
    """

    __slots__ = ("_cycle", "_function", "_phases")

    def __init__(
        self,
        phases: Iterable[tuple[int | None, float]] | CapacityFunction,
        *,
        cycle: bool = False,
    ) -> None:
        self._cycle = bool(cycle)
        if callable(phases):
            self._function: CapacityFunction | None = phases
            self._phases: tuple[tuple[int | None, float], ...] = ()
            return
        self._function = None
        checked = []
        for i, item in enumerate(phases):
            try:
                capacity, seconds = item
            except (TypeError, ValueError):
                raise ValueError(f"capacity_timeline[{i}] must be (concurrency, seconds), got {item!r}") from None
            _check_capacity(capacity, f"capacity_timeline[{i}] concurrency")
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not (seconds > 0 and math.isfinite(seconds))
            ):
                raise ValueError(f"capacity_timeline[{i}] seconds must be a finite number > 0, got {seconds!r}")
            checked.append((capacity, float(seconds)))
        if not checked:
            raise ValueError("capacity_timeline needs at least one (concurrency, seconds) phase")
        self._phases = tuple(checked)

    @property
    def phases(self) -> tuple[tuple[int | None, float], ...]:
        """The ``(concurrency, seconds)`` phases; empty when the timeline is a function."""
        return self._phases

    @property
    def cycle(self) -> bool:
        return self._cycle

    def at(self, elapsed: float) -> int | None:
        """Capacity ``elapsed`` seconds after the start (before the start: the first phase)."""
        if self._function is not None:
            return _check_capacity(self._function(max(0.0, elapsed)), "capacity_timeline function result")
        t = max(0.0, elapsed)
        if self._cycle:
            t %= sum(seconds for _, seconds in self._phases)
        for capacity, seconds in self._phases:
            if t < seconds:
                return capacity
            t -= seconds
        return self._phases[-1][0]

    def changes(self, until: float) -> list[tuple[float, int | None]]:
        """``(start_s, capacity)`` for each phase that begins before ``until``; for plots.

        A function timeline has no phases to list, so this samples it every 0.1 s and keeps
        the points where the value changes.
        """
        out: list[tuple[float, int | None]] = []
        if self._function is not None:
            steps = int(until / 0.1) + 1
            for i in range(steps):
                value = self.at(i * 0.1)
                if not out or out[-1][1] != value:
                    out.append((i * 0.1, value))
            return out
        start = 0.0
        while start < until:
            for capacity, seconds in self._phases:
                if start >= until:
                    break
                if not out or out[-1][1] != capacity:
                    out.append((start, capacity))
                start += seconds
            if not self._cycle:
                break
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CapacityTimeline):
            return NotImplemented
        return (self._phases, self._function, self._cycle) == (other._phases, other._function, other._cycle)

    def __hash__(self) -> int:
        return hash((self._phases, self._function, self._cycle))

    def __repr__(self) -> str:
        body = repr(self._function) if self._function is not None else repr(list(self._phases))
        return f"CapacityTimeline({body}{', cycle=True' if self._cycle else ''})"


#: What ``capacity_timeline`` accepts: phases, a function, or a ready timeline.
TimelineSpec: TypeAlias = CapacityTimeline | Iterable[tuple[int | None, float]] | CapacityFunction
