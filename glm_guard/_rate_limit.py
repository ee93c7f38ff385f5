"""``@rate_limited``: calls per window, calls in flight, and cooldown after a 429."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from . import _validate
from ._auto_concurrency import AutoConcurrency
from ._classify import ErrorInfo
from ._config import get_settings
from ._errors import ConfigurationError, RateLimitTimeout
from ._stack import Stack, entry, join
from ._wrapping import default_key, kind_of, unwrap_descriptor
from .backends import Limiter, LimitPolicy, get_backend
from .backends._base import AsyncPermit, Backend, Outcome, Permit

__all__ = ["rate_limited"]

P = ParamSpec("P")
R = TypeVar("R")

#: A provider's Retry-After is honoured up to this long; beyond it is more likely a bug
#: than a wish to silence every caller of the key for hours.
MAX_COOLDOWN_SECONDS: Final = 600.0


@overload
def rate_limited(calls: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def rate_limited(
    calls: int | None = None,
    period: float | None = None,
    *,
    concurrency: int | AutoConcurrency | str | None = None,
    key: str | None = None,
    backend: str | Backend | None = None,
    max_wait: float | None = None,
    cooldown: float | None = None,
    on_backend_error: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def rate_limited(
    calls: Any = None,
    period: float | None = None,
    *,
    concurrency: int | AutoConcurrency | str | None = None,
    key: str | None = None,
    backend: str | Backend | None = None,
    max_wait: float | None = None,
    cooldown: float | None = None,
    on_backend_error: str | None = None,
) -> Any:
    """Admit at most ``calls`` starts in any ``period`` seconds and ``concurrency`` in flight.

    ``period`` defaults to 60 s and means nothing without ``calls``, so giving it alone is an
    error rather than a silent per-minute limit.  Callers over the limit wait their turn in
    arrival order (blocking the thread, or awaiting); with ``max_wait`` a caller that would
    wait longer gets
    :class:`~glm_guard.RateLimitTimeout` at once instead.  With neither ``calls`` nor
    ``concurrency`` the limits come from ``GLM_API_MAX_CALLS_PER_MINUTE`` (per 60 s) and
    ``GLM_API_MAX_CONCURRENCY``.

    ``concurrency="auto"`` (or an :class:`~glm_guard.AutoConcurrency` with bounds) learns the
    limit from the provider's answers instead: cut after a 1302, grown while it is in use,
    shared by every process on the backend (see ``docs/adaptive.md``).  A 1302 then cuts the
    limit instead of pausing the key; a Retry-After the provider sends is still honoured.

    Functions decorated with the same ``key`` share one budget; the default key is the
    function's ``module.qualname``, so the same function shares one limit across processes
    on a shared backend.  When a rate-limit error passes out of the call, the whole key
    pauses for the error's Retry-After (at most ``MAX_COOLDOWN_SECONDS``), or, when it names
    none, ``cooldown`` seconds (default ``GLM_GUARD_DEFAULT_COOLDOWN``; ``0``: no pause).
    """
    if callable(calls):
        return rate_limited()(calls)
    settings = get_settings()
    failure_policy = settings.on_backend_error if on_backend_error is None else on_backend_error
    if period is not None:
        _validate.seconds("period", period, allow_zero=False)
    if period is not None and calls is None:
        raise ConfigurationError("period", f"needs calls (how many starts per {period!r} s); got no calls")
    if calls is None and concurrency is None:
        policy = LimitPolicy(settings.max_calls_per_minute, 60.0, settings.max_concurrency, failure_policy)
    else:
        policy = LimitPolicy(
            _validate.positive_int("calls", calls, optional=True),
            cast(float, _validate.seconds("period", 60.0 if period is None else period, allow_zero=False)),
            _concurrency(concurrency),
            failure_policy,
        )
    wait_limit = _validate.seconds("max_wait", max_wait, optional=True)
    pause = _validate.seconds("cooldown", cooldown, optional=True)
    guard = _Guard(policy, wait_limit, settings.default_cooldown if pause is None else pause)
    explicit_key = _validate.key_name("key", key)
    store = get_backend(backend)

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        fn, rewrap = unwrap_descriptor(target)
        limiter = store.limiter(explicit_key or default_key(fn))
        inner, stack = join(
            fn, key=explicit_key, backend=store, backend_from_environment=backend is None, limit_backend=store
        )
        return cast(Callable[P, R], rewrap(entry(_wrap(inner, limiter, guard, stack), stack)))

    return decorate


def _concurrency(value: object) -> int | AutoConcurrency | None:
    if isinstance(value, AutoConcurrency):
        return value
    if isinstance(value, str):
        if value.strip().lower() != "auto":
            raise ConfigurationError("concurrency", f'must be a positive integer or "auto", got {value!r}')
        return AutoConcurrency()
    return _validate.positive_int("concurrency", value, optional=True)


class _Guard:
    """One decorator's frozen policy, and the decisions it makes around each call."""

    __slots__ = ("cooldown", "max_wait", "policy")

    def __init__(self, policy: LimitPolicy, max_wait: float | None, cooldown: float) -> None:
        self.policy = policy
        self.max_wait = max_wait
        self.cooldown = cooldown

    def pause_after(self, info: ErrorInfo) -> float:
        """Seconds every caller of the key should pause after an error (0: not a rate limit).

        Under a learned limit a 1302 cuts the limit instead, so only the provider's own
        Retry-After pauses the key.
        """
        if not info.is_rate_limit:
            return 0.0
        if info.retry_after is not None:
            return min(info.retry_after, MAX_COOLDOWN_SECONDS)
        if isinstance(self.policy.concurrency, AutoConcurrency):
            return 0.0
        return min(self.cooldown, MAX_COOLDOWN_SECONDS)

    def held(self, limiter: Limiter, stack: Stack) -> _Held | _Unguarded:
        """A permit for one call, as a context manager (sync or async); none in testing mode."""
        return _Held(self, limiter, stack) if stack.limits_on else _UNGUARDED


class _Held:
    """A permit held for one call: admitted on entry, given back on exit, and the key paused
    when a rate-limit error passes out."""

    __slots__ = ("guard", "limiter", "permit", "stack")

    def __init__(self, guard: _Guard, limiter: Limiter, stack: Stack) -> None:
        self.guard = guard
        self.limiter = limiter
        self.stack = stack

    def _timed(self, started: float, timed_out: bool) -> None:
        self.stack.waited(time.perf_counter() - started, timed_out)

    def __enter__(self) -> None:
        started = time.perf_counter()
        try:
            self.permit: Permit | AsyncPermit = self.limiter.acquire(self.guard.policy, self.guard.max_wait)
        except RateLimitTimeout:
            self._timed(started, True)
            raise
        self._timed(started, False)

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        outcome = None
        try:
            outcome, seconds = self._after(error)
            if seconds > 0:
                self.limiter.cooldown(seconds)
        finally:
            cast(Permit, self.permit).release(outcome)

    async def __aenter__(self) -> None:
        started = time.perf_counter()
        try:
            self.permit = await self.limiter.acquire_async(self.guard.policy, self.guard.max_wait)
        except RateLimitTimeout:
            self._timed(started, True)
            raise
        self._timed(started, False)

    async def __aexit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        outcome = None
        try:
            outcome, seconds = self._after(error)
            if seconds > 0:
                await self.limiter.cooldown_async(seconds)
        finally:
            await cast(AsyncPermit, self.permit).release(outcome)

    def _after(self, error: BaseException | None) -> tuple[Outcome | None, float]:
        """What the call's end teaches a learned limit, and how long the whole key should pause."""
        if error is None:
            return Outcome.SUCCEEDED, 0.0
        if not isinstance(error, Exception):
            return None, 0.0  # cancelled, or the process exits: nothing learned about the limit
        info = self.stack.verdict(error)
        return (Outcome.LIMITED if info.kind == "rate_limit" else None), self.guard.pause_after(info)


class _Unguarded:
    """``set_testing(True)``: no permit, no wait, no pause."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_UNGUARDED: Final = _Unguarded()


def _wrap(fn: Callable[..., Any], limiter: Limiter, guard: _Guard, stack: Stack) -> Callable[..., Any]:
    kind = kind_of(fn)
    if kind == "async":

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            async with guard.held(limiter, stack):
                return await fn(*args, **kwargs)

        return async_wrapper

    if kind == "sync":

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            with guard.held(limiter, stack):
                return fn(*args, **kwargs)

        return sync_wrapper

    if kind == "generator":

        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            with guard.held(limiter, stack):  # a stream holds its permit until it ends or is closed
                return (yield from fn(*args, **kwargs))

        return generator_wrapper

    @functools.wraps(fn)
    async def async_generator_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        # The permit ends with the stream, which is closed at once, not by the garbage collector.
        async with guard.held(limiter, stack), contextlib.aclosing(fn(*args, **kwargs)) as stream:
            async for item in stream:
                yield item

    return async_generator_wrapper
