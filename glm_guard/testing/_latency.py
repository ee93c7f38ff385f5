"""Heavy-tailed call latency, as LLM calls have: most are near the median, a few are far out.

A fixed or uniform latency makes every slot free up on a beat, which flatters a client
limiter; a lognormal body with an optional Pareto tail gives the stragglers real calls have.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["LogNormalLatency"]

_Z95 = 1.6448536269514722  # the standard normal's 95th percentile


@dataclass(frozen=True, slots=True)
class LogNormalLatency:
    """Latency drawn from a lognormal with this ``median`` (seconds) and shape ``sigma``.

    ``sigma`` 0.5 gives a p99 about 3.2 x the median, 1.0 about 10 x. With ``pareto_share``
    > 0, that share of calls is drawn instead from a Pareto tail of index ``pareto_alpha``
    starting at the lognormal's 95th percentile (lower alpha, heavier tail). ``cap``, if set,
    bounds every draw, so a test's worst case stays known. Draws use the simulator's seeded RNG.
    """

    median: float
    sigma: float
    pareto_share: float = 0.0
    pareto_alpha: float = 1.5
    cap: float | None = None

    def __post_init__(self) -> None:
        if not (self.median > 0 and math.isfinite(self.median)):
            raise ValueError(f"lognormal latency median must be a finite number > 0 seconds, got {self.median!r}")
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError(f"lognormal latency sigma must be a finite number >= 0, got {self.sigma!r}")
        if not 0.0 <= self.pareto_share <= 1.0:
            raise ValueError(f"pareto_share must be in [0, 1], got {self.pareto_share!r}")
        if not (self.pareto_alpha > 0 and math.isfinite(self.pareto_alpha)):
            raise ValueError(f"pareto_alpha must be > 0, got {self.pareto_alpha!r}")
        if self.cap is not None and not (self.cap > 0 and math.isfinite(self.cap)):
            raise ValueError(f"latency cap must be a finite number > 0 seconds, got {self.cap!r}")

    def draw(self, rng: random.Random) -> float:
        """One latency in seconds."""
        if self.pareto_share and rng.random() < self.pareto_share:
            value = self.median * math.exp(_Z95 * self.sigma) * rng.paretovariate(self.pareto_alpha)
        else:
            value = rng.lognormvariate(math.log(self.median), self.sigma)
        return min(value, self.cap) if self.cap is not None else value
