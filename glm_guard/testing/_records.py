"""What the simulator hands back to tests and benchmarks: per-request records and counters.

Records carry start, end and outcome so a benchmark can rebuild in-flight over time and
count refusals per window after the run, without sampling anything while it runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ._config import mask_key

__all__ = ["Outcome", "RequestRecord", "SimulatorStats", "count_codes", "in_flight_at"]

Outcome = Literal["completed", "stream_failed", "disconnected"]


@dataclass(frozen=True, slots=True, repr=False)
class RequestRecord:
    """One request as the simulator saw it; times are ``time.monotonic()`` seconds.

    ``time`` is when it was decided (admitted or refused). ``end`` is when an admitted
    request gave its slot back (``None`` while still in flight; equal to ``time`` for a
    refusal). ``outcome`` is ``"rejected"`` for an error answer, how an admitted request
    ended, or ``None`` while in flight. ``code`` is the business code, ``None`` if admitted.
    """

    time: float
    api_key: str | None
    model: str | None
    stream: bool
    status: int
    code: str | None
    end: float | None = None
    outcome: Outcome | Literal["rejected"] | None = None

    @property
    def start(self) -> float:
        return self.time

    @property
    def admitted(self) -> bool:
        return self.code is None

    def in_flight_at(self, t: float) -> bool:
        """Whether this request held a concurrency slot at monotonic time ``t``."""
        end = math.inf if self.end is None else self.end
        return self.admitted and self.time <= t < end

    def __repr__(self) -> str:
        end = "None" if self.end is None else f"{self.end:.3f}"
        return (
            f"RequestRecord(time={self.time:.3f}, api_key={mask_key(self.api_key)!r}, "
            f"model={self.model!r}, stream={self.stream}, status={self.status}, code={self.code!r}, "
            f"end={end}, outcome={self.outcome!r})"
        )


def in_flight_at(
    records: Iterable[RequestRecord], t: float, *, api_key: str | None = None, model: str | None = None
) -> int:
    """Admitted requests holding a slot at monotonic time ``t`` (for one key/model if given)."""
    return sum(
        1
        for r in records
        if r.in_flight_at(t) and (api_key is None or r.api_key == api_key) and (model is None or r.model == model)
    )


def count_codes(records: Iterable[RequestRecord], code: str | None, start: float, end: float) -> int:
    """Requests decided in ``[start, end)`` that got ``code`` (``None`` counts admissions)."""
    return sum(1 for r in records if r.code == code and start <= r.time < end)


def _mask_pairs(d: Mapping[tuple[str, str], int]) -> str:
    return "{" + ", ".join(f"({mask_key(k)!r}, {m!r}): {v}" for (k, m), v in d.items()) + "}"


@dataclass(frozen=True, repr=False)
class SimulatorStats:
    """Point-in-time snapshot of the counters (taken under the lock, so self-consistent).

    Attributes:
        total_requests: requests that reached the chat-completions endpoint.
        admitted: requests that got a concurrency slot (passed auth, faults and limits).
        completed: admitted requests answered in full with ``finish_reason`` stop/length.
        rejected: business code -> number of error answers (1302, 1002, injected faults...).
        in_flight / peak_in_flight: admitted requests being served now / the maximum ever
            seen at once since the last reset, over all keys and models.
        in_flight_by / peak_in_flight_by: the same per ``(api_key, model)``.
        streams_started: admitted streaming requests whose SSE response began.
        streams_failed: streams ended on purpose by an injected mid-stream failure.
        disconnected: admitted requests whose client went away (or that ``stop()`` cut).
        capacity: the per-(key, model) concurrency limit now (``capacity_timeline`` or
            ``concurrency``; ``None`` = unlimited); ``model_concurrency`` overrides are not in it.
        timeline_elapsed: seconds since the capacity timeline started.
    """

    total_requests: int = 0
    admitted: int = 0
    completed: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    in_flight_by: Mapping[tuple[str, str], int] = field(default_factory=dict)
    peak_in_flight_by: Mapping[tuple[str, str], int] = field(default_factory=dict)
    streams_started: int = 0
    streams_failed: int = 0
    disconnected: int = 0
    capacity: int | None = None
    timeline_elapsed: float = 0.0

    @property
    def rejected_total(self) -> int:
        """All error answers, whatever the code."""
        return sum(self.rejected.values())

    def peak_for(self, api_key: str, model: str) -> int:
        """Peak in-flight for one (key, model) pair; 0 if never seen."""
        return self.peak_in_flight_by.get((api_key, model), 0)

    def in_flight_for(self, api_key: str, model: str) -> int:
        """Current in-flight for one (key, model) pair."""
        return self.in_flight_by.get((api_key, model), 0)

    def __repr__(self) -> str:
        return (
            f"SimulatorStats(total_requests={self.total_requests}, admitted={self.admitted}, "
            f"completed={self.completed}, rejected={dict(self.rejected)!r}, "
            f"in_flight={self.in_flight}, peak_in_flight={self.peak_in_flight}, "
            f"in_flight_by={_mask_pairs(self.in_flight_by)}, "
            f"peak_in_flight_by={_mask_pairs(self.peak_in_flight_by)}, "
            f"streams_started={self.streams_started}, streams_failed={self.streams_failed}, "
            f"disconnected={self.disconnected}, capacity={self.capacity}, "
            f"timeline_elapsed={self.timeline_elapsed:.3f})"
        )
