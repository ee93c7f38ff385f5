"""Whether Redis answers, and what this process did while it did not (an outage)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from ..._config import mask_url
from ..._errors import BackendError, BackendRefused

logger = logging.getLogger("glm_guard")

#: The first backoff after a failure, doubled per failed probe up to the longest.
FIRST_BACKOFF_SECONDS: Final = 0.25
LONGEST_BACKOFF_SECONDS: Final = 5.0
#: At most one warning per this many seconds about requests Redis refused (out of memory).
REFUSAL_WARNING_SECONDS: Final = 60.0


class Health:
    """After a failure, calls skip Redis until a backoff has passed, so none waits on a socket.

    The backoff doubles per failed *probe*: a request sent after the previous backoff ended.
    The calls that were already in flight when Redis went away fail together and count once,
    so a blip costs one short backoff, not the longest.  Likewise a request sent before Redis
    answered again, whose failure arrives after (a thread that reports late on a busy host),
    belongs to the outage just ended and starts no new one.  A request Redis refused
    (:class:`~glm_guard.BackendRefused`, e.g. out of memory) says Redis answers: it starts no
    backoff, and only that call is served by its policy.

    One warning per outage, not per call, and one line when Redis is back.  ``outages``
    counts the outages that began; ``outage_calls`` the calls this process served by the
    decorators' ``on_backend_error`` policy meanwhile; ``refusals`` the requests refused.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self.failures = 0  # failed probes of the current outage; 0 while Redis answers
        self.down_until = 0.0  # end of the backoff; once Redis answers again, when it did
        self.outages = 0
        self.outage_calls = 0
        self.refusals = 0
        self._refusal_warned = -REFUSAL_WARNING_SECONDS

    def after_fork(self) -> None:
        """A forked child's own lock: one another thread held at the fork would never open."""
        self._lock = threading.Lock()

    def available(self) -> bool:
        return self.failures == 0 or time.monotonic() >= self.down_until

    def failed(self, error: BackendError) -> None:
        if isinstance(error, BackendRefused):
            self._refused(error)
            return
        now = time.monotonic()
        sent = now if error.sent is None else error.sent
        with self._lock:
            if sent < self.down_until:
                return  # sent before this backoff step ended, or before Redis answered again: counted
            self.failures += 1
            self.down_until = now + min(FIRST_BACKOFF_SECONDS * 2 ** (self.failures - 1), LONGEST_BACKOFF_SECONDS)
            first = self.failures == 1
            if first:
                self.outages += 1
        if first:
            logger.warning(
                "glm_guard: Redis at %s is unreachable (%s); applying each decorator's on_backend_error policy "
                "until it answers again",
                mask_url(self._url),
                type(error.__cause__ or error).__name__,
            )

    def _refused(self, error: BackendRefused) -> None:
        now = time.monotonic()
        with self._lock:
            self.refusals += 1
            warn = now - self._refusal_warned >= REFUSAL_WARNING_SECONDS
            if warn:
                self._refusal_warned = now
        if warn:
            logger.warning(
                "glm_guard: %s; the calls it refuses are served by their on_backend_error policy, "
                "the others keep using Redis (at most one such warning a minute)",
                error,
            )

    def succeeded(self) -> None:
        with self._lock:
            was_down = self.failures > 0
            self.failures = 0
            if was_down:
                self.down_until = time.monotonic()
        if was_down:
            logger.warning("glm_guard: Redis at %s answers again; shared limits resume", mask_url(self._url))

    def served_without_redis(self) -> None:
        """One call was served by its ``on_backend_error`` policy instead of through Redis."""
        with self._lock:
            self.outage_calls += 1

    def error(self) -> BackendError:
        return BackendError(f"redis backend {mask_url(self._url)} is unreachable (retrying with backoff)")
