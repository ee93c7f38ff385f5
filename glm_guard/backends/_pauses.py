"""Pauses that refuse a key's calls at once: a quota window, arrears, an overloaded model.

A cooldown makes callers wait a few seconds; these last minutes to hours, so callers fail
fast instead (and ``fallback`` serves at once).  When the pause ends, one call goes through
as a probe and the others keep failing for one more ``probe_every``; the probe's success ends
the pause, and its failure starts a new one.  So however many processes share the key, the
provider sees one request per interval until it answers again.

The same rule runs in ``lua/acquire.lua`` and ``lua/pause.lua`` on Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["LONGEST_PAUSE_SECONDS", "PAUSE_REASONS", "KeyPaused", "Pause"]

#: What can pause a key; the decorator turns each into its own exception.
PAUSE_REASONS: Final = ("quota", "arrears", "overload")

#: A quota's reset time is honoured up to a day ahead (weekly and monthly windows included:
#: the probe after a day costs one request, and answers with the new reset time).
LONGEST_PAUSE_SECONDS: Final = 86_400.0


class KeyPaused(Exception):
    """Raised by a backend's admission while a pause is in force (turned into a public error)."""

    def __init__(self, key: str, reason: str, seconds_left: float) -> None:
        self.key = key
        self.reason = reason
        self.seconds_left = seconds_left
        super().__init__(f"{key!r} is paused ({reason}) for {seconds_left:.1f}s more")


@dataclass(slots=True)
class Pause:
    """A pause on one key, in the limiter's clock."""

    reason: str
    until: float
    probe_every: float
    since: float  # when it began: a probe's success ends only the pause it probed

    def admits(self, now: float) -> bool:
        """Whether a call may go now; the one that may is the probe, and the others wait for it."""
        if now < self.until:
            return False
        self.until = now + self.probe_every
        return True
