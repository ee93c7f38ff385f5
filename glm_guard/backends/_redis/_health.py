"""Whether Redis answers, and what this process did while it did not (an outage)."""

from __future__ import annotations

import logging
import threading
import time

from ..._config import mask_url
from ..._errors import BackendError

logger = logging.getLogger("glm_guard")


class Health:
    """After a failure, calls skip Redis until a backoff has passed, so none waits on a socket.

    One warning per outage, not per call, and one line when Redis is back.  ``outages``
    counts the outages that began; ``outage_calls`` the calls this process served by the
    decorators' ``on_backend_error`` policy meanwhile.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self.failures = 0
        self.down_until = 0.0
        self.outages = 0
        self.outage_calls = 0

    def available(self) -> bool:
        return self.failures == 0 or time.monotonic() >= self.down_until

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self.down_until = time.monotonic() + min(0.25 * 2 ** (self.failures - 1), 5.0)
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

    def succeeded(self) -> None:
        with self._lock:
            was_down = self.failures > 0
            self.failures = 0
        if was_down:
            logger.warning("glm_guard: Redis at %s answers again; shared limits resume", mask_url(self._url))

    def served_without_redis(self) -> None:
        """One call was served by its ``on_backend_error`` policy instead of through Redis."""
        with self._lock:
            self.outage_calls += 1

    def error(self) -> BackendError:
        return BackendError(f"redis backend {mask_url(self._url)} is unreachable (retrying with backoff)")
