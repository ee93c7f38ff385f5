"""Fixed log-spaced duration buckets: percentiles that add up across processes.

Every process counts durations into the same buckets, so merging two processes (or sixty
minute buckets in Redis) is adding counts, and memory never grows with the number of calls.
Buckets are 10^(1/20) (about 12%) wide from 10 µs to 10,000 s; a percentile is read by
geometric interpolation inside its bucket, so it is within about 6% of the true value.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["BOUNDS", "PROMETHEUS_BOUNDS", "bucket", "cumulative", "quantile"]

#: Upper bounds (seconds) of buckets ``0 .. len(BOUNDS) - 1``; bucket ``len(BOUNDS)`` is the overflow.
BOUNDS: Final = tuple(1e-5 * 10 ** (i / 20) for i in range(181))

#: The bucket indices exported to Prometheus: 1 ms to 1,000 s, four per decade.
PROMETHEUS_BOUNDS: Final = tuple(range(40, 161, 5))


def bucket(seconds: float) -> int:
    """The bucket of ``seconds``: bucket ``i`` holds durations in ``(BOUNDS[i-1], BOUNDS[i]]``."""
    return bisect_left(BOUNDS, seconds)


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) of the durations counted in ``counts``, ``None`` if empty."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        count = counts[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            if index == 0:
                return BOUNDS[0]
            if index >= len(BOUNDS):
                return BOUNDS[-1]
            low, high = BOUNDS[index - 1], BOUNDS[index]
            return float(low * (high / low) ** ((rank - seen) / count))
        seen += count
    return BOUNDS[-1]  # pragma: no cover - rank <= total always lands in a bucket


def cumulative(counts: Mapping[int, int], indices: Iterable[int]) -> list[tuple[float, int]]:
    """``(upper bound, count of durations <= it)`` for each bucket index, as Prometheus wants them."""
    ordered = sorted((i, c) for i, c in counts.items() if c > 0)
    result = []
    position = running = 0
    for index in indices:
        while position < len(ordered) and ordered[position][0] <= index:
            running += ordered[position][1]
            position += 1
        result.append((BOUNDS[index], running))
    return result
