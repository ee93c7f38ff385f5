"""The concurrency limit learned from the provider's answers (``concurrency="auto"``).

GLM limits the requests in flight per account and model, publishes no number, and cuts it
at peak hours.  The only signal is the 1302 itself, so the rule is loss-based AIMD, the
approach Netflix's concurrency-limits recommends for clients, with four refinements taken
from where the anchors fail:

- **One cut per congestion epoch.**  Every cut starts a new epoch; a 1302 cuts only when its
  call was admitted in the current epoch.  The calls that were already in flight when the
  capacity fell all fail together, and they make one cut, not one each (Envoy's epoch rule,
  DataDesigner's cascade dedup), across every process sharing the key.
- **A cut to what was running.**  The limit falls to ``min(floor(limit * 0.9), others)``,
  ``others`` being the calls that were running when the refused call was admitted and still
  are: the provider refused it while those ran, so it holds at most that many.  Calls admitted
  after it are left out, since in a burst they are refused too (slow start admits two calls
  per success, so a burst overshoots by as many as finish together).
  At the small limits GLM gives (2 to 20) a floored x0.9 removes one slot; the in-flight
  bound makes a larger drop (20 -> 5) take a few epochs, not twenty.  The cut that ends slow
  start is the same: the limit grows one slot per success and a refusal comes back within
  milliseconds, so it overshoots the capacity by a slot or two, not by half (halving, as TCP
  does, cut 21 to 10 at capacity 20 in the benchmark).
  A failed probe above the best level that held (the *peak*) goes back to it, one slot.
- **Growth only while the limit is in use.**  A success counts only if the limit was reached
  (a call waited, or filled the last slot) since the last change, and only if the call was
  admitted after the last cut.  Before the first 1302 ever, each such success adds one slot
  (slow start: the limit doubles per call latency); after it, a limit's worth of successes
  adds one (one slot per call latency).
- **A ceiling that damps probing but never pins the limit.**  The limit that last drew a 1302
  is remembered as the ceiling.  Climbing back to it is a probe, allowed after
  ``limit * 2**misses`` successes (``misses``: probes at it that failed in a row), at most
  :data:`LONGEST_PROBE_GAP` successes; below a peak the capacity fell from, the first
  :data:`RECOVERY_PROBES` come every :data:`RECOVERY_GAP` limits' worth instead, since peak
  hours end.  So
  a steady capacity costs a probe every hundred-odd calls at worst, while a capacity that came
  back is found after at most that many successes;
  a probe that succeeds (a limit's worth of successes at the ceiling) forgets the ceiling,
  and the limit then climbs one slot per success back to the peak it held before the
  capacity fell (a climb that draws a 1302 forgets that peak).

The same rule runs in ``lua/learn.lua`` and ``lua/acquire.lua`` on Redis, where one atomic
step reads it for admission; ``tests/test_learned.py`` drives both with the same events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..monitoring._events import HUB, LimitChanged, emit, wall_clock
from ._base import LearnedState

__all__ = ["BACKOFF", "LONGEST_PROBE_GAP", "Admission", "LearnedLimit", "report_limit", "stored_state"]

#: A cut keeps this share of the limit (floored, so at least one slot goes).
BACKOFF: Final = 0.9

#: Below the peak the capacity fell from, the first 24 probes come every two limits' worth of
#: successes (two call latencies at full use), not further apart per failure: a capacity that
#: comes back within a peak hour is found within a few call latencies, at the price of at most
#: 24 extra 1302s per drop; and a fresh cut is seen to hold for two latencies before the first.
RECOVERY_GAP: Final = 2
RECOVERY_PROBES: Final = 24

#: The most successes a probe of the ceiling waits for: a steady capacity costs at most about
#: one 1302 per this many calls, and a capacity that came back is found within as many.
LONGEST_PROBE_GAP: Final = 128


class Admission(NamedTuple):
    """Where a call entered a learned limit: the epoch, and the calls running then, itself included."""

    epoch: int
    running: int

    def others(self, in_flight_now: int) -> int:
        """The calls running when this one was admitted that may still run (``in_flight_now``
        excludes it): what the provider held when it refused this call, at most."""
        return min(in_flight_now, self.running - 1)


@dataclass(slots=True)
class LearnedLimit:
    """One key's learned concurrency limit and what the rule remembers about it."""

    limit: int
    lowest: int
    highest: int
    epoch: int = 0
    busy: bool = False  # the limit was reached since the last change
    streak: int = 0  # successes counted since the last change
    ceiling: int = 0  # the limit that last drew a 1302 (0: none known)
    misses: int = 0  # probes of the ceiling that failed in a row
    peak: int = 0  # the highest limit that held a limit's worth of successes

    @classmethod
    def starting(cls, lowest: int, highest: int, initial: int) -> LearnedLimit:
        return cls(min(max(initial, lowest), highest), lowest, highest)

    def admitted(self, in_flight: int) -> int:
        """A call was admitted, ``in_flight`` counting it; returns the epoch it belongs to."""
        if in_flight >= self.limit:
            self.busy = True
        return self.epoch

    def refused(self) -> None:
        """A caller found every slot taken: the limit is in use."""
        self.busy = True

    def succeeded(self, epoch: int) -> bool:
        """A call admitted in ``epoch`` got its answer; ``True`` if the limit changed."""
        if epoch != self.epoch or not self.busy:
            return False
        self.streak += 1
        if self.streak >= self.limit:  # the limit held for a call latency at full use
            self.peak = max(self.peak, self.limit)
            if self.ceiling and self.limit >= self.ceiling:
                self.ceiling = self.misses = 0  # the capacity is back at the level that failed
        if self.streak < self._successes_to_grow() or self.limit >= self.highest:
            return False
        self.limit += 1
        self.streak = 0
        self.busy = False
        return True

    def limited(self, epoch: int, others_in_flight: int) -> bool:
        """A call admitted in ``epoch`` got a 1302 while ``others_in_flight`` others ran;
        ``True`` if the limit changed (a new epoch began)."""
        if epoch != self.epoch:
            return False  # this congestion was answered already
        old = self.limit
        if self.peak and old > self.peak:
            cut = old - 1  # a probe above the best level that held failed: back to it
        else:
            cut = math.floor(old * BACKOFF)
            if not self.ceiling and old < self.peak:
                self.peak = 0  # a climb back towards the peak overshot: that peak is gone
        if self.ceiling == old:
            self.misses = min(self.misses + 1, 64)
        else:
            self.ceiling, self.misses = old, 1
        self.limit = max(self.lowest, min(cut, others_in_flight))
        self.epoch += 1
        self.streak = 0
        self.busy = False
        return self.limit != old

    def _successes_to_grow(self) -> int:
        if self.epoch == 0 and not self.ceiling:
            return 1  # slow start: no 1302 seen yet
        if not self.ceiling and self.limit < self.peak:
            return 1  # a probe found the capacity back: climb to the level that held before
        if not self.ceiling or self.limit + 1 < self.ceiling:
            return self.limit
        longest = max(self.limit, LONGEST_PROBE_GAP)
        if self.limit < self.peak and self.misses <= RECOVERY_PROBES:
            return min(RECOVERY_GAP * self.limit, longest)  # below a level that held: peak hours end
        return min(self.limit << min(self.misses, 16), longest)


def report_limit(key: str, limit: int, epoch: int) -> None:
    """Tell monitoring that the learned limit of ``key`` is now ``limit``."""
    if HUB.active:
        emit(LimitChanged(key, limit, epoch, wall_clock()))


def _whole(value: object, low: int, high: int) -> int | None:
    """``value`` (bytes from Redis) as a whole number in ``low..high``, else ``None``."""
    try:
        number = float(value.decode() if isinstance(value, bytes) else str(value))
    except (UnicodeDecodeError, ValueError):
        return None
    if not low <= number <= high or number != math.floor(number):  # NaN and infinities fail the range
        return None
    return int(number)


def stored_state(limit: object, epoch: object) -> LearnedState | None:
    """The ``limit`` and ``epoch`` fields of a key's learned hash in Redis, read as ``learn.lua``
    reads them: a limit that is not a whole number in range means none is stored (``None``),
    an epoch that is not reads as 0, so planted data never reaches stats as a number."""
    value = _whole(limit, 1, 10**9)
    if value is None:
        return None
    return LearnedState(value, _whole(epoch, 0, 10**15) or 0)
