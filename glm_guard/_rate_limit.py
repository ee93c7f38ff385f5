"""``@rate_limited``: calls per window, calls in flight, and cooldown after a 429."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from . import _probe, _validate
from ._classify import DEFAULT_CLASSIFIER
from ._config import TESTING, get_settings
from ._events import HUB
from ._wrapping import default_key, kind_of, unwrap_descriptor
from .backends import Limiter, LimitPolicy, get_backend
from .backends._base import Backend, Permit

__all__ = ["rate_limited"]

perf_counter = time.perf_counter

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
    period: float = 60.0,
    *,
    concurrency: int | None = None,
    key: str | None = None,
    backend: str | Backend | None = None,
    max_wait: float | None = None,
    cooldown: float | None = None,
    on_backend_error: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def rate_limited(
    calls: Any = None,
    period: float = 60.0,
    *,
    concurrency: int | None = None,
    key: str | None = None,
    backend: str | Backend | None = None,
    max_wait: float | None = None,
    cooldown: float | None = None,
    on_backend_error: str | None = None,
) -> Any:
    """Admit at most ``calls`` starts in any ``period`` seconds and ``concurrency`` in flight.

    Callers over the limit wait their turn in arrival order (blocking the thread, or
    awaiting); with ``max_wait`` a caller that would wait longer gets
    :class:`~glm_guard.RateLimitTimeout` at once instead.  With neither ``calls`` nor
    ``concurrency`` the limits come from ``GLM_API_MAX_CALLS_PER_MINUTE`` (per 60 s) and
    ``GLM_API_MAX_CONCURRENCY``.

    Functions decorated with the same ``key`` share one budget; the default key is the
    function's ``module.qualname``, so the same function shares one limit across processes
    on a shared backend.  When a rate-limit error passes out of the call, the whole key
    pauses for the error's Retry-After (at most ``MAX_COOLDOWN_SECONDS``), or, when it names
    none, ``cooldown`` seconds (default ``GLM_GUARD_DEFAULT_COOLDOWN``; ``0``: no pause).
    """
    if callable(calls):
        return rate_limited()(calls)
    settings = get_settings()
    _validate.seconds("period", period, allow_zero=False)
    failure_policy = settings.on_backend_error if on_backend_error is None else on_backend_error
    if calls is None and concurrency is None:
        policy = LimitPolicy(settings.max_calls_per_minute, 60.0, settings.max_concurrency, failure_policy)
    else:
        policy = LimitPolicy(
            _validate.positive_int("calls", calls, optional=True),
            cast(float, _validate.seconds("period", period, allow_zero=False)),
            _validate.positive_int("concurrency", concurrency, optional=True),
            failure_policy,
        )
    wait_limit = _validate.seconds("max_wait", max_wait, optional=True)
    pause = _validate.seconds("cooldown", cooldown, optional=True)
    pause_seconds = settings.default_cooldown if pause is None else pause
    explicit_key = _validate.key_name("key", key)
    store = get_backend(backend)
    if backend is None:
        _probe.note_default_backend(store)

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        fn, rewrap = unwrap_descriptor(target)
        limiter = store.limiter(explicit_key or default_key(fn))
        inner, label = _probe.attach(fn, key=explicit_key)
        wrapper = _wrap(inner, limiter, policy, wait_limit, pause_seconds, label)
        raw = _probe.unreported(inner)
        solo = None
        if raw is not None and limiter.in_process:
            solo = _solo(raw, wrapper, limiter, policy, wait_limit, pause_seconds, label)
        return cast(Callable[P, R], rewrap(_probe.entry(wrapper, label, reporting=solo)))

    return decorate


def _cool_down_for(error: BaseException, default: float) -> float:
    """Seconds every caller of the key should pause after ``error`` (0: not a rate limit)."""
    info = DEFAULT_CLASSIFIER.classify(error)
    if not info.is_rate_limit:
        return 0.0
    seconds = default if info.retry_after is None else info.retry_after
    return min(seconds, MAX_COOLDOWN_SECONDS)


def _solo(
    raw: Callable[..., Any],
    layer: Callable[..., Any],
    limiter: Limiter,
    policy: LimitPolicy,
    max_wait: float | None,
    pause: float,
    label: _probe.Label,
) -> Callable[..., Any] | None:
    """The whole stack when ``rate_limited`` (in-process) is its only guard, in one wrapper.

    It admits, runs ``raw`` and reports the attempt and the call itself, so limiting a plain
    function costs one wrapper and one stats record rather than three and two.  The layered
    stack serves the rare ways: testing mode, or nothing recording.
    """
    layered = _probe.entry(layer, label)
    kind = kind_of(raw)
    try_acquire, release = limiter.try_acquire, limiter.release
    if kind == "async":

        @functools.wraps(raw)
        async def async_solo(*args: Any, **kwargs: Any) -> Any:
            if TESTING.active or not HUB.active:
                return await layered(*args, **kwargs)
            started = began = perf_counter()
            if HUB.subscribers or not try_acquire(policy):
                try:
                    await _probe.acquire_async(limiter, policy, max_wait, label)
                except Exception as error:
                    _probe.call_failed(label, started, error)
                    raise
                began = perf_counter()
            try:
                result = await raw(*args, **kwargs)
            except Exception as error:
                _probe.solo_failed(label, started, began, error)
                seconds = _cool_down_for(error, pause)
                if seconds > 0:
                    limiter.cooldown(seconds)
                raise
            finally:
                release()
            _probe.solo_answered(label, started, began, result)
            return result

        return async_solo

    if kind == "sync":

        @functools.wraps(raw)
        def sync_solo(*args: Any, **kwargs: Any) -> Any:
            if TESTING.active or not HUB.active:
                return layered(*args, **kwargs)
            started = began = perf_counter()
            if HUB.subscribers or not try_acquire(policy):
                try:
                    _probe.acquire(limiter, policy, max_wait, label)
                except Exception as error:
                    _probe.call_failed(label, started, error)
                    raise
                began = perf_counter()
            try:
                result = raw(*args, **kwargs)
            except Exception as error:
                _probe.solo_failed(label, started, began, error)
                seconds = _cool_down_for(error, pause)
                if seconds > 0:
                    limiter.cooldown(seconds)
                raise
            finally:
                release()
            _probe.solo_answered(label, started, began, result)
            return result

        return sync_solo

    return None  # streams keep the layered way


def _wrap(
    fn: Callable[..., Any],
    limiter: Limiter,
    policy: LimitPolicy,
    max_wait: float | None,
    pause: float,
    label: _probe.Label,
) -> Callable[..., Any]:
    kind = kind_of(fn)
    # An in-process limiter admits a free call with one plain method call; only a caller
    # that must wait (or whose wait a subscriber wants to see) takes the timed, awaited way.
    try_acquire = limiter.try_acquire if limiter.in_process else None
    if kind == "async" and try_acquire is not None:
        release = limiter.release

        @functools.wraps(fn)
        async def async_local_wrapper(*args: Any, **kwargs: Any) -> Any:
            if TESTING.active:
                return await fn(*args, **kwargs)
            if HUB.subscribers or not try_acquire(policy):
                await _probe.acquire_async(limiter, policy, max_wait, label)
            try:
                return await fn(*args, **kwargs)
            except Exception as error:
                seconds = _cool_down_for(error, pause)
                if seconds > 0:
                    limiter.cooldown(seconds)
                raise
            finally:
                release()

        return async_local_wrapper

    if kind == "async":

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if TESTING.active:
                return await fn(*args, **kwargs)
            permit = await _probe.acquire_async(limiter, policy, max_wait, label)
            try:
                return await fn(*args, **kwargs)
            except Exception as error:
                seconds = _cool_down_for(error, pause)
                if seconds > 0:
                    await limiter.cooldown_async(seconds)
                raise
            finally:
                await permit.release()

        return async_wrapper

    if kind == "sync":

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if TESTING.active:
                return fn(*args, **kwargs)
            permit: Permit = limiter
            if try_acquire is None or HUB.subscribers or not try_acquire(policy):
                permit = _probe.acquire(limiter, policy, max_wait, label)
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                seconds = _cool_down_for(error, pause)
                if seconds > 0:
                    limiter.cooldown(seconds)
                raise
            finally:
                permit.release()

        return sync_wrapper

    if kind == "generator":

        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            # A stream holds its permit until it is exhausted or closed.
            permit = None if TESTING.active else _probe.acquire(limiter, policy, max_wait, label)
            try:
                return (yield from fn(*args, **kwargs))
            except Exception as error:
                seconds = _cool_down_for(error, pause)
                if seconds > 0 and permit is not None:
                    limiter.cooldown(seconds)
                raise
            finally:
                if permit is not None:
                    permit.release()

        return generator_wrapper

    @functools.wraps(fn)
    async def async_generator_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        permit = None if TESTING.active else await _probe.acquire_async(limiter, policy, max_wait, label)
        try:
            async with contextlib.aclosing(fn(*args, **kwargs)) as stream:  # the permit ends with it
                async for item in stream:
                    yield item
        except Exception as error:
            seconds = _cool_down_for(error, pause)
            if seconds > 0 and permit is not None:
                await limiter.cooldown_async(seconds)
            raise
        finally:
            if permit is not None:
                await permit.release()

    return async_generator_wrapper
