"""``@rate_limited``: calls per window, calls in flight, and cooldown after a 429."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Final, ParamSpec, TypedDict, TypeVar, Unpack, cast, overload

from . import _validate
from ._auto_concurrency import AutoConcurrency
from ._classify import ErrorInfo
from ._config import get_settings
from ._errors import ConfigurationError, RateLimitTimeout
from ._key_pauses import pause_of, refusal
from ._provider_limits import headers_of, provider_wait, tokens_left
from ._stack import Stack, entry, join
from ._token_budget import TOKEN_SIDES, Estimate, Tokenizer, TokenSide, count_tokens, reservation, tokens_used
from ._wrapping import default_key, kind_of, unwrap_descriptor, watched
from .backends import Limiter, LimitPolicy, get_backend
from .backends._base import AsyncPermit, Backend, Outcome, Permit, ProviderLeft, Spending
from .backends._pauses import KeyPaused

__all__ = ["LimitOptions", "RateOptions", "rate_limited"]

P = ParamSpec("P")
R = TypeVar("R")

#: A provider's Retry-After is honoured up to this long; beyond it is more likely a bug
#: than a wish to silence every caller of the key for hours.
MAX_COOLDOWN_SECONDS: Final = 600.0
#: A reset the provider's headers name is waited out this much longer: it is written to the
#: millisecond (truncated) on the provider's clock and the next request takes its own way
#: there, so a wait of exactly the reset can reach the provider a little before it.
RESET_MARGIN_SECONDS: Final = 0.02


class RateOptions(TypedDict, total=False):
    """How ``rate_limited`` admits calls; ``glm_guard.http``'s transports take these too."""

    concurrency: int | AutoConcurrency | str | None
    max_wait: float | None
    cooldown: float | None
    on_backend_error: str | None
    arrears_pause: float | None
    overload_pause: float | None
    burst: tuple[int, float] | None


class LimitOptions(RateOptions, total=False):
    """``rate_limited``'s keywords: how it admits calls, and the token budget it estimates from
    the decorated call's arguments (a transport sees no arguments, so it has no budget)."""

    tokens: int | None
    estimate: Estimate | None
    tokenizer: Tokenizer | None
    refund_unused: bool
    tokens_of: str


@overload
def rate_limited(calls: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def rate_limited(
    calls: int | None = None,
    period: float | None = None,
    *,
    key: str | None = None,
    backend: str | Backend | None = None,
    **options: Unpack[LimitOptions],
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def rate_limited(
    calls: Any = None,
    period: float | None = None,
    *,
    key: str | None = None,
    backend: str | Backend | None = None,
    **options: Unpack[LimitOptions],
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

    Errors no retry fixes soon pause the whole key, in every process, and callers then fail
    fast with a :class:`~glm_guard.KeyPausedError` (so a ``fallback`` answers at once): a
    used-up quota window (1304, 1308, 1310) until the reset time the provider names (at most
    a day), :class:`~glm_guard.QuotaExhausted`; arrears (1113) for ``arrears_pause`` seconds
    (default ``GLM_GUARD_ARREARS_PAUSE``, 300), :class:`~glm_guard.AccountInArrears`; an
    overloaded model (1305, 1312) for ``overload_pause`` seconds (default
    ``GLM_GUARD_OVERLOAD_PAUSE``, 30), :class:`~glm_guard.ModelOverloaded`.  When a pause
    ends one call probes, and the others keep failing until it has answered.

    ``tokens`` budgets tokens per ``period`` (alone it limits nothing else): each call reserves
    an estimate before it starts and the answer's ``usage`` settles it afterwards, in both
    directions; a call that fails or is cancelled gives its reservation back.  The estimate is
    ``estimate(*args, **kwargs)`` when given, else the prompt's tokens (``messages``, ``prompt``,
    ``input``, ``system`` keywords, counted by ``tokenizer``, default :func:`count_tokens`) plus
    ``max_tokens`` (``max_completion_tokens``); :func:`token_estimate` overrides it for the calls
    made inside it.  An estimate above the whole budget fails at once (``ConfigurationError``).
    ``refund_unused=False`` keeps a call's whole estimate counted when it used less, for a
    provider that counts ``max_tokens`` when the request arrives (OpenAI does).
    ``tokens_of="input"`` (or ``"output"``) counts only the prompt's (or the answer's) tokens,
    in the estimate and the settlement, for a provider that limits them apart: Anthropic's
    input and output tokens per minute are two decorators with a key each.

    ``burst=(n, seconds)`` caps starts at ``n`` in any ``seconds`` as well, for providers that
    check sub-windows (Azure: 600 per minute is 10 per second); ``(1, period / calls)`` paces
    starts evenly.  It is checked in the same step as the other limits.

    Functions decorated with the same ``key`` share one budget; the default key is the
    function's ``module.qualname``, so the same function shares one limit across processes
    on a shared backend.  When a rate-limit error passes out of the call, the whole key
    pauses for the error's Retry-After (at most ``MAX_COOLDOWN_SECONDS``), or, when it names
    none, ``cooldown`` seconds (default ``GLM_GUARD_DEFAULT_COOLDOWN``; ``0``: no pause).
    """
    if callable(calls):
        return rate_limited()(calls)
    _validate.known_keywords("rate_limited", options, LimitOptions.__optional_keys__)
    guard = limit_guard(calls, period, **options)
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


def limit_guard(
    calls: int | None = None,
    period: float | None = None,
    *,
    concurrency: int | AutoConcurrency | str | None = None,
    max_wait: float | None = None,
    cooldown: float | None = None,
    on_backend_error: str | None = None,
    arrears_pause: float | None = None,
    overload_pause: float | None = None,
    burst: tuple[int, float] | None = None,
    tokens: int | None = None,
    estimate: Estimate | None = None,
    tokenizer: Tokenizer | None = None,
    refund_unused: bool = True,
    tokens_of: str = "all",
) -> _Guard:
    """``rate_limited``'s policy, validated (a bad value names its parameter) and frozen.

    Shared with ``glm_guard.http``'s transports, which admit each request the same way.
    """
    settings = get_settings()
    failure_policy = settings.on_backend_error if on_backend_error is None else on_backend_error
    if period is not None:
        _validate.seconds("period", period, allow_zero=False)
    if period is not None and calls is None and tokens is None:
        raise ConfigurationError("period", f"needs calls or tokens (how many per {period!r} s); got neither")
    if estimate is not None and not callable(estimate):
        raise ConfigurationError("estimate", f"must be a function of the call's arguments, got {estimate!r}")
    if not isinstance(refund_unused, bool):
        raise ConfigurationError("refund_unused", f"must be True or False, got {refund_unused!r}")
    if tokenizer is not None and not callable(tokenizer):
        raise ConfigurationError("tokenizer", f"must be a function of a string, got {tokenizer!r}")
    if tokens_of not in TOKEN_SIDES:
        raise ConfigurationError("tokens_of", f"must be one of {', '.join(map(repr, TOKEN_SIDES))}, got {tokens_of!r}")
    if tokens_of != "all" and tokens is None:
        raise ConfigurationError("tokens_of", f"says what a token budget counts: give tokens= with {tokens_of!r}")
    side = cast(TokenSide, tokens_of)  # checked above
    if calls is None and concurrency is None and tokens is None and burst is None:
        policy = LimitPolicy(settings.max_calls_per_minute, 60.0, settings.max_concurrency, failure_policy)
    else:
        policy = LimitPolicy(
            _validate.positive_int("calls", calls, optional=True),
            cast(float, _validate.seconds("period", 60.0 if period is None else period, allow_zero=False)),
            _concurrency(concurrency),
            failure_policy,
            _validate.positive_int("tokens", tokens, optional=True),
            burst=_burst(burst),
        )
    wait_limit = _validate.seconds("max_wait", max_wait, optional=True)
    pause = _validate.seconds("cooldown", cooldown, optional=True)
    arrears = _validate.seconds("arrears_pause", arrears_pause, optional=True, allow_zero=False)
    overload = _validate.seconds("overload_pause", overload_pause, optional=True, allow_zero=False)
    return _Guard(
        policy,
        wait_limit,
        settings.default_cooldown if pause is None else pause,
        {
            "arrears": settings.arrears_pause if arrears is None else arrears,
            "overload": settings.overload_pause if overload is None else overload,
        },
        None if policy.tokens is None else _Budget(estimate, tokenizer or count_tokens, refund_unused, side),
    )


def _burst(value: object) -> tuple[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise ConfigurationError("burst", f"must be (starts, seconds), such as (10, 1.0); got {value!r}")
    starts = _validate.positive_int("burst", value[0])
    seconds = _validate.seconds("burst", value[1], allow_zero=False)
    assert starts is not None and seconds is not None
    return starts, float(seconds)


def _concurrency(value: object) -> int | AutoConcurrency | None:
    if isinstance(value, AutoConcurrency):
        return value
    if isinstance(value, str):
        if value.strip().lower() != "auto":
            raise ConfigurationError("concurrency", f'must be a positive integer or "auto", got {value!r}')
        return AutoConcurrency()
    return _validate.positive_int("concurrency", value, optional=True)


@dataclasses.dataclass(frozen=True, slots=True)
class _Budget:
    """How a decorator with ``tokens`` estimates each call."""

    estimate: Estimate | None
    tokenizer: Tokenizer
    refund_unused: bool
    side: TokenSide


@dataclasses.dataclass(frozen=True, slots=True)
class _Guard:
    """One decorator's frozen policy, and the decisions it makes around each call."""

    policy: LimitPolicy
    max_wait: float | None
    cooldown: float
    pauses: dict[str, float]
    budget: _Budget | None = None

    def policy_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LimitPolicy:
        """The policy of one call: the decorator's, with the call's reservation under a token budget."""
        budget, policy = self.budget, self.policy
        if budget is None or policy.tokens is None:
            return policy
        tokens = reservation(budget.estimate, budget.tokenizer, args, kwargs, budget.side)
        if tokens > policy.tokens:
            raise ConfigurationError(
                "tokens",
                f"this call's estimate of {tokens} tokens exceeds the whole budget of {policy.tokens} per "
                f"{policy.period:g} s, so it could never start; lower its max_tokens, raise tokens, or "
                "give a smaller estimate (token_estimate, estimate=)",
            )
        return dataclasses.replace(policy, reserve=tokens)

    def pause_after(self, info: ErrorInfo) -> float:
        """Seconds every caller of the key should wait after an error (0: not a rate limit).

        Under a learned limit a 1302 cuts the limit instead, so only the provider's own
        Retry-After pauses the key; an overloaded model opens its breaker instead.
        """
        if not info.is_rate_limit or info.pause is not None:
            return 0.0
        if info.retry_after is not None:
            return min(info.retry_after, MAX_COOLDOWN_SECONDS)
        if isinstance(self.policy.concurrency, AutoConcurrency):
            return 0.0
        return min(self.cooldown, MAX_COOLDOWN_SECONDS)

    def held(self, limiter: Limiter, stack: Stack, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Held | _Unguarded:
        """A permit for one call, as a context manager (sync or async); none in testing mode."""
        return _Held(self, limiter, stack, self.policy_of(args, kwargs)) if stack.limits_on else _UNGUARDED


class _Waiting:
    """Around either flavour's wait for a permit: reports the wait, and turns a paused key into
    the caller's own refusal."""

    __slots__ = ("_stack", "_started")

    def __init__(self, stack: Stack) -> None:
        self._stack = stack

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if error is None or isinstance(error, RateLimitTimeout):
            self._stack.waited(time.perf_counter() - self._started, error is not None)
        elif isinstance(error, KeyPaused):
            raise refusal(error) from None


class _Held:
    """A permit held for one call: admitted on entry, given back on exit, and the key paused
    when a rate-limit error passes out."""

    __slots__ = ("guard", "limiter", "permit", "policy", "stack", "told_left", "told_wait", "used")

    def __init__(self, guard: _Guard, limiter: Limiter, stack: Stack, policy: LimitPolicy) -> None:
        self.guard = guard
        self.limiter = limiter
        self.stack = stack
        self.policy = policy
        self.used: int | None = None  # the tokens the answer reported, once it has
        self.told_wait = 0.0  # how long the provider's rate-limit headers say the key must wait
        self.told_left: tuple[int, float] | None = None  # the provider's tokens left and seconds to their reset

    def answered(self, answer: object) -> None:
        """The call returned (or a stream yielded) ``answer``: read the tokens it reports, and what
        the provider's rate-limit headers say is left."""
        budget = self.guard.budget
        if budget is not None:
            used = tokens_used(answer, budget.side)
            if used is not None:
                self.used = used
        headers = headers_of(answer)
        if headers is not None:
            unknown_reset = self.guard.cooldown or 1.0
            self.told_wait = provider_wait(headers, self.policy.reserve, unknown_reset)
            if budget is not None:
                self.told_left = tokens_left(headers, side=budget.side) or self.told_left

    def _settle(self, error: BaseException | None) -> None:
        """Tell a token reservation what to become: the usage reported, or nothing after a failure;
        and the budget what the provider said is left of its own count (whatever spent it)."""
        if isinstance(self.permit, Spending):
            used = self.used
            budget = self.guard.budget
            if used is not None and budget is not None and not budget.refund_unused:
                used = max(used, self.policy.reserve)  # the provider counted the whole request
            self.permit.used = 0 if error is not None else used
            if self.told_left is not None and self.policy.tokens is not None:
                self.permit.provider_left = ProviderLeft(*self.told_left, self.policy.tokens, self.policy.period)

    def __enter__(self) -> _Held:
        with _Waiting(self.stack):
            self.permit: Permit | AsyncPermit = self.limiter.acquire(self.policy, self.guard.max_wait)
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        outcome = None
        self._settle(error)
        try:
            outcome, seconds, pause = self._after(error)
            if pause is not None:
                self.limiter.pause(*pause)
            if seconds > 0:
                self.limiter.cooldown(seconds)
        finally:
            cast(Permit, self.permit).release(outcome)

    async def __aenter__(self) -> _Held:
        with _Waiting(self.stack):
            self.permit = await self.limiter.acquire_async(self.policy, self.guard.max_wait)
        return self

    async def __aexit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        outcome = None
        self._settle(error)
        try:
            outcome, seconds, pause = self._after(error)
            if pause is not None:
                await self.limiter.pause_async(*pause)
            if seconds > 0:
                await self.limiter.cooldown_async(seconds)
        finally:
            await cast(AsyncPermit, self.permit).release(outcome)

    def _after(self, error: BaseException | None) -> tuple[Outcome | None, float, tuple[str, float, float] | None]:
        """What the call's end teaches a learned limit, how long the key's callers should wait,
        and the pause (reason, seconds, probe interval) it starts."""
        if error is None:  # the provider's headers may say its count ran out: wait for its reset
            wait = self.told_wait + RESET_MARGIN_SECONDS if self.told_wait else 0.0
            return Outcome.SUCCEEDED, min(wait, MAX_COOLDOWN_SECONDS), None
        if not isinstance(error, Exception):
            return None, 0.0, None  # cancelled, or the process exits: nothing learned about the limit
        info = self.stack.verdict(error)
        limited = info.kind == "rate_limit" and info.pause is None  # the account's limit, not the model's load
        outcome = Outcome.LIMITED if limited else None
        return outcome, self.guard.pause_after(info), pause_of(info, self.guard.pauses)


class _Unguarded:
    """``set_testing(True)``: no permit, no wait, no pause."""

    __slots__ = ()

    def answered(self, answer: object) -> None:
        return None

    def __enter__(self) -> _Unguarded:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> _Unguarded:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


_UNGUARDED: Final = _Unguarded()


def _wrap(fn: Callable[..., Any], limiter: Limiter, guard: _Guard, stack: Stack) -> Callable[..., Any]:
    kind = kind_of(fn)
    if kind == "async":

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            async with guard.held(limiter, stack, args, kwargs) as held:
                answer = await fn(*args, **kwargs)
                held.answered(answer)
                return answer

        return async_wrapper

    if kind == "sync":

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            with guard.held(limiter, stack, args, kwargs) as held:
                answer = fn(*args, **kwargs)
                held.answered(answer)
                return answer

        return sync_wrapper

    if kind == "generator":

        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            with guard.held(limiter, stack, args, kwargs) as held:  # a stream holds its permit until it ends
                if guard.budget is None:
                    return (yield from fn(*args, **kwargs))
                with contextlib.closing(fn(*args, **kwargs)) as stream:  # its usage comes in its last chunk
                    return (yield from watched(stream, held.answered))

        return generator_wrapper

    @functools.wraps(fn)
    async def async_generator_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        # The permit ends with the stream, which is closed at once, not by the garbage collector.
        async with guard.held(limiter, stack, args, kwargs) as held, contextlib.aclosing(fn(*args, **kwargs)) as stream:
            async for item in stream:
                held.answered(item)
                yield item

    return async_generator_wrapper
