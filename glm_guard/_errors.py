"""The library's own exceptions.

Every error glm_guard raises is a :class:`GLMGuardError`.  The one users catch most is
:class:`GLMRateLimitException`: the name the seed's code already uses in
``except GLMRateLimitException``, raised when the guard gives up on a rate-limited call.
"""

from __future__ import annotations

import datetime

__all__ = [
    "AccountInArrears",
    "BackendError",
    "BackendRefused",
    "BackendRequestError",
    "ConfigurationError",
    "GLMGuardError",
    "GLMRateLimitException",
    "KeyPausedError",
    "ModelOverloaded",
    "QuotaExhausted",
    "RateLimitTimeout",
    "RetryBudgetExhausted",
]


class GLMGuardError(Exception):
    """Base class of every exception raised by glm_guard itself."""


class ConfigurationError(GLMGuardError, ValueError):
    """A decorator argument or an environment variable has an invalid value.

    Raised as early as possible (at decoration time for decorator arguments) and always
    names the offending parameter or variable, so the fix is obvious from the message.
    """

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class GLMRateLimitException(GLMGuardError):
    """The provider kept answering with a rate-limit error and the guard gave up.

    Attributes:
        code: the provider's error code (``"1302"`` for GLM), or ``None`` when unknown.
        retry_after: seconds the provider asked us to wait, if it said so.
        attempts: how many calls were made before giving up.
    """

    def __init__(
        self,
        message: str = "rate limit reached",
        *,
        code: str | None = None,
        retry_after: float | None = None,
        attempts: int = 0,
    ) -> None:
        self.code = code
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(message)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self)!r}, code={self.code!r}, "
            f"retry_after={self.retry_after!r}, attempts={self.attempts!r})"
        )


class RateLimitTimeout(GLMRateLimitException):
    """A caller would have waited longer than its ``max_wait`` for a permit.

    Raised at once, instead of sleeping, when the wait is known in advance to be too long,
    or when ``max_wait`` runs out while waiting for a concurrency slot.
    """

    def __init__(self, key: str, max_wait: float, expected_wait: float | None) -> None:
        self.key = key
        self.max_wait = max_wait
        self.expected_wait = expected_wait
        if expected_wait is None:
            detail = f"no permit became free within max_wait={max_wait:g}s"
        else:
            detail = f"the wait ({expected_wait:.3f}s) would exceed max_wait={max_wait:g}s"
        super().__init__(f"rate limit for {key!r}: {detail}", attempts=0)


class BackendError(GLMGuardError):
    """The shared store behind a backend (e.g. Redis) failed; the cause is chained.

    Unless it is a :class:`BackendRefused`, the store counts as unreachable: calls skip it
    for a backoff and are served by their ``on_backend_error`` policy.
    """

    #: When the failed request was sent (``time.monotonic()``), if known: it tells a probe sent
    #: after a backoff ended from the calls that were already in flight when the store went away.
    sent: float | None = None


class BackendRefused(BackendError):
    """The shared store answered, but refused this one request (out of memory, read-only replica).

    The call is served by its ``on_backend_error`` policy; the backend is not marked
    unreachable, so the next call asks the store again.
    """


class BackendRequestError(GLMGuardError):
    """The shared store rejected a request's arguments or the data it found under glm_guard's keys.

    A bug, or a store not set up as glm_guard expects (a database the server does not have,
    an ACL user without the commands glm_guard runs, another program's data under the key
    prefix).  Not a :class:`BackendError`: no outage policy hides it, and the backend stays in
    use for every other call.  The store's own error is chained.
    """


class RetryBudgetExhausted(GLMRateLimitException):
    """``retry_on_1302`` gave up early: the key's retries already fill its retry budget.

    When every call of a key is rate limited, retrying each one multiplies the load on a
    provider that is already refusing; the budget lets only a share of the calls retry, and
    the rest fail fast (to a ``fallback``, if any).  Chained from the provider's last error.

    Attributes:
        key: the rate-limit key whose budget is spent.
        attempts: the calls made before giving up.
    """

    def __init__(self, key: str, attempts: int, *, code: str | None = None, retry_after: float | None = None) -> None:
        self.key = key
        super().__init__(
            f"rate limited (code {code or 'unknown'}) after {attempts} attempt(s); "
            f"the retry budget of {key!r} is spent, so no retry",
            code=code,
            retry_after=retry_after,
            attempts=attempts,
        )


class KeyPausedError(GLMRateLimitException):
    """The guard refused the call at once: the key is paused, in every process sharing it.

    Raised instead of waiting, because these pauses last minutes to hours, so a ``fallback``
    serves at once and nothing is sent to the provider until the pause ends.  The subclass
    says why.

    Attributes:
        key: the rate-limit key that is paused.
        retry_at: when the pause ends (Unix time); one call then probes whether it is over.
    """

    def __init__(self, key: str, code: str | None, retry_at: float, why: str) -> None:
        self.key = key
        self.retry_at = retry_at
        when = datetime.datetime.fromtimestamp(retry_at, datetime.UTC).isoformat(timespec="seconds")
        super().__init__(f"{key!r} is paused until {when}: {why}", code=code, attempts=0)


class QuotaExhausted(KeyPausedError):
    """A quota window is used up (GLM 1304 daily, 1308 five-hour, 1310 weekly or monthly).

    ``resets_at`` is the reset time the provider named (Unix time), or ``None`` when it named
    none (then the key is paused for a fixed time, and a probe asks again).
    """

    def __init__(self, key: str, code: str | None, resets_at: float | None, retry_at: float) -> None:
        self.resets_at = resets_at
        super().__init__(key, code, retry_at, f"quota window used up (code {code or 'unknown'})")


class AccountInArrears(KeyPausedError):
    """The account has no balance left (GLM 1113); one probe per interval checks for a top-up."""

    def __init__(self, key: str, code: str | None, retry_at: float) -> None:
        super().__init__(key, code, retry_at, f"account in arrears (code {code or 'unknown'})")


class ModelOverloaded(KeyPausedError):
    """The model, not the account, is overloaded (GLM 1305, 1312): its breaker is open.

    Typically caught by a ``fallback`` that calls a smaller model; one probe per interval
    decides when the model is back.
    """

    def __init__(self, key: str, code: str | None, retry_at: float) -> None:
        super().__init__(key, code, retry_at, f"model overloaded (code {code or 'unknown'})")
