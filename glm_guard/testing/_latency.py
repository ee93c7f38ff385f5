"""Heavy-tailed latencies, as LLM calls have: most answers are quick, a few take many times longer."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable

__all__ = ["lognormal_latency"]


def lognormal_latency(median: float, sigma: float, seed: int | None = None) -> Callable[[], float]:
    """A ``latency`` for the simulator: seconds drawn from a lognormal with this ``median``.

    ``sigma`` is the spread of the logarithm: 0.5 puts the 99th percentile at about 3.2 x the
    median, 1.0 at about 10 x.  ``seed`` makes the draws repeat.
    """
    if not (median > 0 and math.isfinite(median)):
        raise ValueError(f"latency median must be > 0 seconds, got {median!r}")
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"latency sigma must be >= 0, got {sigma!r}")
    rng = random.Random(seed)
    lock = threading.Lock()  # the simulator draws from its own thread, callers' tests from theirs
    mu = math.log(median)

    def draw() -> float:
        with lock:
            return rng.lognormvariate(mu, sigma)

    return draw
