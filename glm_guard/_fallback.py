"""``@fallback``: a degraded answer instead of an error, marked so nobody caches it."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from ._call_context import begin_call, mark_degraded
from ._errors import ConfigurationError, GLMRateLimitException
from ._stack import Stack, entry, join
from ._wrapping import default_key, kind_of, unwrap_descriptor

__all__ = ["fallback"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("glm_guard")

ErrorFilter = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _matcher(on: ErrorFilter | None) -> Callable[[BaseException], bool] | None:
    """The filter ``on`` describes; ``None`` for the default, rate limits as the stack sees them."""
    if on is None:
        return None
    if isinstance(on, type) and issubclass(on, BaseException):
        return lambda error: isinstance(error, on)
    if isinstance(on, tuple) and on and all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
        return lambda error: isinstance(error, on)
    if callable(on) and not isinstance(on, type):
        return on
    raise ConfigurationError("on", f"must be an exception class, a tuple of them, or a predicate; got {on!r}")


def fallback(value_or_callable: Any, *, on: ErrorFilter | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """On a matching error return ``value_or_callable``, or call it with the same arguments.

    A callable is called with the guarded function's own arguments (and awaited if it is
    async), e.g. the same request against a smaller model.  ``on`` defaults to rate-limit
    errors: :class:`~glm_guard.GLMRateLimitException` and whatever ``retry_on_1302``
    recognises; other errors propagate untouched.  The answer is marked degraded, so
    ``cached_response`` never stores it, and its type is unchanged.
    """
    chosen = _matcher(on)
    replacement: Callable[..., Any] | None = value_or_callable if callable(value_or_callable) else None

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        fn, rewrap = unwrap_descriptor(target)
        kind = kind_of(fn)
        name = default_key(fn)
        if kind in ("generator", "async_generator"):
            raise ConfigurationError("fallback", f"cannot wrap the generator function {name}")
        if kind == "sync" and replacement is not None and kind_of(replacement) == "async":
            raise ConfigurationError("value_or_callable", f"is async but {name} is sync; give a sync fallback")
        inner, stack = join(fn, fallback=True)
        matches = chosen or _rate_limits_of(stack)

        if kind == "async":

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                begin_call()  # the mark then describes this call, whatever came before
                try:
                    return await inner(*args, **kwargs)
                except Exception as error:
                    if not matches(error):
                        raise
                    logger.warning("glm_guard: %s failed with %s; serving its fallback", name, type(error).__name__)
                    stack.fell_back(error)
                    if replacement is None:
                        answer = value_or_callable
                    else:
                        answer = replacement(*args, **kwargs)
                        if inspect.isawaitable(answer):
                            answer = await answer
                    mark_degraded()
                    return answer

            return cast(Callable[P, R], rewrap(entry(async_wrapper, stack)))

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            begin_call()
            try:
                return inner(*args, **kwargs)
            except Exception as error:
                if not matches(error):
                    raise
                logger.warning("glm_guard: %s failed with %s; serving its fallback", name, type(error).__name__)
                stack.fell_back(error)
                answer = value_or_callable if replacement is None else replacement(*args, **kwargs)
                mark_degraded()
                return answer

        return cast(Callable[P, R], rewrap(entry(sync_wrapper, stack)))

    return decorate


def _rate_limits_of(stack: Stack) -> Callable[[BaseException], bool]:
    def is_rate_limit(error: BaseException) -> bool:
        return isinstance(error, GLMRateLimitException) or stack.verdict(error).is_rate_limit

    return is_rate_limit
