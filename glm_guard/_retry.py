"""``@retry_on_1302``: retry what a retry can fix, and nothing else.

The loop is ours rather than ``backoff.on_exception`` because backoff's full jitter also
shortens a provider's Retry-After, and its ``max_time`` check uses an elapsed time taken
before the sleep (litl/backoff#186), so it can sleep past the deadline.  backoff still
supplies the delay schedule (``expo``) and the jitter (``full_jitter``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from contextvars import Token
from dataclasses import dataclass
from typing import Any, ParamSpec, TypedDict, TypeVar, Unpack, cast, overload

from . import _validate
from ._call_context import RETRYING, Retrying
from ._classify import DEFAULT_PERMANENT_CODES, DEFAULT_RETRYABLE_CODES, Classifier, ErrorInfo
from ._errors import ConfigurationError, GLMRateLimitException, RetryBudgetExhausted
from ._sdk import sdk_retry_warning
from ._stack import Stack, entry, join
from ._wrapping import default_key, kind_of, unwrap_descriptor
from .backends._base import RetryBudget, RetryBudgetPolicy

__all__ = ["BackoffOptions", "RetryOptions", "retry_on_1302"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("glm_guard")

# Module-level so tests can replace the clock and the sleeps with a virtual clock.
_clock = time.monotonic
_sleep = time.sleep


async def _async_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class _RetryPolicy:
    name: str
    max_tries: int
    max_time: float | None
    base_delay: float
    max_delay: float
    jitter: bool
    retry_on_result: bool
    budget: RetryBudgetPolicy | None

    def delay_or_raise(
        self,
        attempt: int,
        attempts: int,
        info: ErrorInfo,
        started: float,
        schedule: Generator[float, Any, None] | None,
        error: BaseException | None,
        stack: Stack,
    ) -> tuple[float, Generator[float, Any, None] | None]:
        """The sleep before the next attempt, or raise :class:`GLMRateLimitException`."""
        if attempt >= attempts:
            raise self.give_up(attempt, info, "attempts ran out", error)
        if info.retry_after is not None:
            delay = min(info.retry_after, self.max_delay)  # the provider's word: no jitter
        else:
            if schedule is None:
                schedule = _exponential(self.base_delay, self.max_delay)
            delay = next(schedule)
            if self.jitter:
                delay = _full_jitter(delay)
        delay = stack.backoff(delay)
        if self.max_time is not None and _clock() - started + delay > self.max_time:
            raise self.give_up(attempt, info, f"the next wait would pass max_time={self.max_time:g}s", error)
        return delay, schedule

    def give_up(self, attempt: int, info: ErrorInfo, why: str, error: BaseException | None) -> GLMRateLimitException:
        exc = GLMRateLimitException(
            f"{self.name}: rate limited (code {info.code or 'unknown'}) after {attempt} attempt(s); {why}",
            code=info.code,
            retry_after=info.retry_after,
            attempts=attempt,
        )
        exc.__cause__ = error
        return exc

    def budget_spent(
        self, key: str, attempt: int, info: ErrorInfo, error: BaseException | None
    ) -> RetryBudgetExhausted:
        exc = RetryBudgetExhausted(key, attempt, code=info.code, retry_after=info.retry_after)
        exc.__cause__ = error
        return exc


def _exponential(base_delay: float, max_delay: float) -> Generator[float, Any, None]:
    import backoff  # deferred: importing backoff costs ~100 ms, paid only on a first retry

    schedule = backoff.expo(base=2, factor=base_delay, max_value=max_delay)
    next(schedule)  # backoff's generators are primed before use
    return schedule


def _full_jitter(value: float) -> float:
    import backoff

    return backoff.full_jitter(value)


def _codes(name: str, codes: Iterable[str | int] | None, default: frozenset[str]) -> frozenset[str]:
    if codes is None:
        return default
    if isinstance(codes, (str, bytes)):
        raise ConfigurationError(name, f"must be a collection of codes, not a single string {codes!r}")
    try:
        items = list(codes)
    except TypeError:
        raise ConfigurationError(name, f"must be a collection of codes, got {type(codes).__name__}") from None
    for code in items:  # str(None) would add the code "None"
        if isinstance(code, bool) or not isinstance(code, (str, int)):
            raise ConfigurationError(name, f"codes must be strings or integers, got {code!r}")
    result = frozenset(str(code).strip() for code in items)
    if "" in result:
        raise ConfigurationError(name, "contains an empty code")
    return result


class BackoffOptions(TypedDict, total=False):
    """How ``retry_on_1302`` retries; ``glm_guard.http``'s transports take these too."""

    max_time: float | None
    base_delay: float
    max_delay: float
    jitter: bool
    retry_codes: Iterable[str | int] | None
    permanent_codes: Iterable[str | int] | None
    retry_budget: RetryBudgetPolicy | bool | None


class RetryOptions(BackoffOptions, total=False):
    """``retry_on_1302``'s keywords after ``max_tries``: how it retries, and whether an error
    returned as the decorated function's value counts (a transport reads the answer itself)."""

    retry_on_result: bool


@overload
def retry_on_1302(max_tries: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def retry_on_1302(
    max_tries: int = 5, **options: Unpack[RetryOptions]
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry_on_1302(max_tries: Any = 5, **options: Unpack[RetryOptions]) -> Any:
    """Retry rate-limit errors (GLM 1302 and kin) with exponential backoff and full jitter.

    At most ``max_tries`` attempts in all (default 5), never sleeping past ``max_time`` seconds
    from the first (default: no limit).  The delay starts at ``base_delay`` (1 s) and doubles up
    to ``max_delay`` (60 s), each drawn at random below that (``jitter=False``: exactly that).
    A provider's Retry-After (capped by ``max_delay``) replaces the backoff delay.
    Permanent errors (1113 arrears, quota windows, auth, content filter) and errors that are
    not rate limits propagate unchanged after the first attempt.  When attempts run out,
    :class:`~glm_guard.GLMRateLimitException` is raised from the last error.

    ``retry_codes`` / ``permanent_codes`` replace the default code sets.  With
    ``retry_on_result=True`` an error dict returned as the result (``{"error": {...}}``) is
    treated like the error it describes.  Inside another ``retry_on_1302`` the inner one
    makes a single attempt, so stacked layers never multiply attempts.

    Retries of a key, across every process sharing its backend, stay within its
    ``retry_budget`` (default :class:`~glm_guard.RetryBudgetPolicy()`: 20 % of its calls over
    10 s, at least 10); beyond it a call fails fast with
    :class:`~glm_guard.RetryBudgetExhausted`.  ``False`` turns the budget off.  The key and
    the backend are the ``rate_limited`` ones in the same stack, else the function's default
    key and ``GLM_GUARD_BACKEND``.
    """
    if callable(max_tries):
        return retry_on_1302()(max_tries)
    _validate.known_keywords("retry_on_1302", options, RetryOptions.__optional_keys__)
    make_policy, classifier = retry_policy(max_tries, **options)

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        fn, rewrap = unwrap_descriptor(target)
        policy = make_policy(default_key(fn))
        inner, stack = join(fn, classifier=classifier)
        stack.check_budget_backend(policy.budget)
        return cast(Callable[P, R], rewrap(entry(_wrap(inner, policy, stack), stack)))

    return decorate


def retry_policy(
    max_tries: object = 5,
    *,
    max_time: float | None = None,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    jitter: object = True,
    retry_codes: Iterable[str | int] | None = None,
    permanent_codes: Iterable[str | int] | None = None,
    retry_budget: object = None,
    retry_on_result: object = False,
) -> tuple[Callable[[str], _RetryPolicy], Classifier | None]:
    """``retry_on_1302``'s policy, validated (a bad value names its parameter): a maker of the
    frozen policy for a name, and the classifier (``None``: the default one).

    Shared with ``glm_guard.http``'s transports, which retry each request the same way.
    """
    if not isinstance(jitter, bool):
        raise ConfigurationError("jitter", f"must be True or False, got {jitter!r}")
    if not isinstance(retry_on_result, bool):
        raise ConfigurationError("retry_on_result", f"must be True or False, got {retry_on_result!r}")
    tries = cast(int, _validate.positive_int("max_tries", max_tries))
    deadline = _validate.seconds("max_time", max_time, optional=True, allow_zero=False)
    base = cast(float, _validate.seconds("base_delay", base_delay))
    cap = cast(float, _validate.seconds("max_delay", max_delay))
    if cap < base:
        raise ConfigurationError("max_delay", f"must be >= base_delay ({base:g}), got {max_delay!r}")
    budget = _budget_policy(retry_budget)
    classifier = None  # the stack keeps the default one
    if retry_codes is not None or permanent_codes is not None:
        classifier = Classifier(
            _codes("retry_codes", retry_codes, DEFAULT_RETRYABLE_CODES),
            _codes("permanent_codes", permanent_codes, DEFAULT_PERMANENT_CODES),
        )
    return functools.partial(
        _RetryPolicy,
        max_tries=tries,
        max_time=deadline,
        base_delay=base,
        max_delay=cap,
        jitter=jitter,
        retry_on_result=retry_on_result,
        budget=budget,
    ), classifier


def _budget_policy(value: object) -> RetryBudgetPolicy | None:
    if value is None:
        return DEFAULT_RETRY_BUDGET
    if value is False:
        return None
    if isinstance(value, RetryBudgetPolicy):
        return value
    raise ConfigurationError(
        "retry_budget", f"must be a RetryBudgetPolicy, None (the default budget) or False (none), got {value!r}"
    )


DEFAULT_RETRY_BUDGET = RetryBudgetPolicy()


class _Run:
    """One retried call: which attempt, since when, the backoff schedule, and what comes next.

    A decision core without I/O: each outcome of an attempt goes in, the sleep before the next
    attempt comes out, or the end (the answer, the error as it is, or giving up).  The one
    question it cannot answer alone, whether the key's retry budget lets the retry go, its
    driver asks the budget (sync or async) and hands the answer to :meth:`retry`.  While it
    runs (``with``) it owns the attempts, so a ``retry_on_1302`` nested inside makes one each;
    one that starts inside another's run passes every outcome straight through.
    """

    __slots__ = (
        "_token",
        "args",
        "attempt",
        "attempts",
        "budget",
        "delay",
        "error",
        "info",
        "kwargs",
        "owner",
        "policy",
        "result",
        "schedule",
        "stack",
        "started",
    )

    def __init__(self, policy: _RetryPolicy, stack: Stack, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.policy = policy
        self.stack = stack
        self.args = args
        self.kwargs = kwargs
        self.attempts = stack.attempts_allowed(policy.max_tries)
        self.started = _clock()
        self.schedule: Generator[float, Any, None] | None = None
        self.attempt = 1
        self.result: object = None
        outer = RETRYING.get()
        self.owner = None if outer is not None and outer.active else Retrying()
        self.budget: RetryBudget | None = None
        if self.owner is not None:  # one logical call: an inner layer's attempts are not calls
            self.budget = stack.retry_budget(policy.budget)
            if self.budget is not None:
                self.budget.deposit()

    def __enter__(self) -> _Run:
        if self.owner is not None:
            self._token: Token[Retrying | None] = RETRYING.set(self.owner)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner is not None:
            self.owner.active = False
            RETRYING.reset(self._token)

    def delay_after(self, result: object, error: Exception | None) -> float | None:
        """Seconds to sleep before the next attempt; ``None`` when ``result`` is the answer.

        Raises ``error`` itself when a retry cannot help, and
        :class:`~glm_guard.GLMRateLimitException` when the attempts or the time run out.
        The retry is not decided until :meth:`retry` has the budget's answer.
        """
        if error is not None:
            delay = None if self.owner is None else self.after_error(error)
            if delay is None:
                raise error
            return delay
        self.result = result
        if self.owner is None or not self.policy.retry_on_result:
            return None
        info = self.stack.classifier.classify_result(result)
        return self._next(info, None) if info.is_rate_limit else None

    def after_error(self, error: BaseException) -> float | None:
        """The sleep before the next attempt; ``None`` when ``error`` must propagate as is."""
        info = self.stack.verdict(error)
        if not info.is_rate_limit:
            if info.kind == "permanent":  # a 1113 the SDK's own retries have already resent
                sdk_retry_warning(self.args, self.kwargs, self.policy.name)
            return None
        delay = self._next(info, error)
        sdk_retry_warning(self.args, self.kwargs, self.policy.name)
        return delay

    def _next(self, info: ErrorInfo, error: BaseException | None) -> float:
        try:
            delay, self.schedule = self.policy.delay_or_raise(
                self.attempt, self.attempts, info, self.started, self.schedule, error, self.stack
            )
        except GLMRateLimitException:
            self.stack.retrying(self.attempt, None, info)
            raise
        self.delay, self.info, self.error = delay, info, error
        return delay

    def budget_allows(self) -> bool:
        return self.budget is None or self.budget.withdraw()

    async def budget_allows_async(self) -> bool:
        return self.budget is None or await self.budget.withdraw_async()

    def retry(self, allowed: bool) -> None:
        """The retry :meth:`delay_after` planned goes (reported), or, refused by the key's retry
        budget, the call gives up with :class:`~glm_guard.RetryBudgetExhausted`."""
        info = self.info
        if not allowed:
            self.stack.retrying(self.attempt, None, info)
            raise self.policy.budget_spent(self.stack.key, self.attempt, info, self.error)
        logger.info(
            "glm_guard: %s hit a rate limit (code %s), retrying in %.2fs (attempt %d of %d)",
            self.policy.name,
            info.code,
            self.delay,
            self.attempt + 1,
            self.attempts,
        )
        self.stack.retrying(self.attempt, self.delay, info)
        self.attempt += 1


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[object, Exception | None]:
    try:
        return fn(*args, **kwargs), None
    except Exception as error:
        return None, error


async def _outcome_async(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[object, Exception | None]:
    try:
        return await fn(*args, **kwargs), None
    except Exception as error:
        return None, error


def _wrap(fn: Callable[..., Any], policy: _RetryPolicy, stack: Stack) -> Callable[..., Any]:
    kind = kind_of(fn)
    if kind == "async":

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with _Run(policy, stack, args, kwargs) as run:
                while (delay := run.delay_after(*await _outcome_async(fn, args, kwargs))) is not None:
                    run.retry(await run.budget_allows_async())
                    if delay > 0:
                        await _async_sleep(delay)
                return run.result

        return async_wrapper

    if kind == "sync":

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            with _Run(policy, stack, args, kwargs) as run:
                while (delay := run.delay_after(*_outcome(fn, args, kwargs))) is not None:
                    run.retry(run.budget_allows())
                    if delay > 0:
                        _sleep(delay)
                return run.result

        return sync_wrapper

    if kind == "generator":

        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            # Retried only until the first item: a retry after that would repeat output.
            run = _Run(policy, stack, args, kwargs)
            while True:
                stream = fn(*args, **kwargs)
                try:
                    first = next(stream)
                except StopIteration as stop:
                    return stop.value
                except Exception as error:
                    delay = _delay_or_raise(run, error)
                    run.retry(run.budget_allows())
                    _sleep(delay)
                    continue
                yield first
                return (yield from stream)

        return generator_wrapper

    @functools.wraps(fn)
    async def async_generator_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        run = _Run(policy, stack, args, kwargs)
        while True:
            stream = fn(*args, **kwargs)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as error:
                delay = _delay_or_raise(run, error)
                run.retry(await run.budget_allows_async())
                await _async_sleep(delay)
                continue
            async with contextlib.aclosing(stream):  # a consumer that stops early closes it at once
                yield first
                async for item in stream:
                    yield item
            return

    return async_generator_wrapper


def _delay_or_raise(run: _Run, error: Exception) -> float:
    delay = run.after_error(error)
    if delay is None:
        raise error
    return delay
