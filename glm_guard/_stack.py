"""Joins stacked guards into one stack, and turns what they did into reports.

The decorators only decide; this is the one module that knows about monitoring and about
``set_testing``.  Each guard gets a :class:`Stack` when it is applied, asks it what the
test switches say, and tells it what happened (a wait, a retry, a cache hit, a fallback).

A stack is settled at decoration time:

- the **innermost** guard (the first applied, right on the user's function) runs it through
  :func:`attempts`, which reports every run: outcome, duration, error code, tokens.  So each
  1302 the provider sends is counted once, retried or not;
- the **outermost** guard's wrapper is wrapped by :func:`entry`, which reports the call as
  the caller saw it (an answer, a fallback, an error, and the time in all).  A guard applied
  on top of an entry unwraps it and puts its own entry outside, so only the outermost entry
  of a stack ever runs.

An exception is classified once per attempt, by the stack's one classifier (the codes a
``retry_on_1302`` in the stack names, else the defaults); the verdict travels with the
exception, so the rate limiter's cooldown, the retry and the stats always agree.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any, Final, Literal

from ._call_context import DEGRADED, begin_call
from ._classify import DEFAULT_CLASSIFIER, Classifier, ErrorInfo
from ._config import TESTING
from ._wrapping import default_key, kind_of
from .monitoring import _events, _recorder
from .monitoring._events import (
    HUB,
    AttemptEvent,
    CacheEvent,
    CallEvent,
    FallbackEvent,
    RetryEvent,
    WaitEvent,
    emit,
)

if TYPE_CHECKING:
    from .backends._base import Backend, RetryBudget, RetryBudgetPolicy

__all__ = ["Stack", "attempts", "entry", "join"]

_ENTRY: Final = "_glm_guard_entry"
_VERDICT: Final = "_glm_guard_verdict"
_PLAIN: Final = frozenset({str, bytes, int, float, bool, type(None)})  # results that carry no usage


class Stack:
    """One stack of guards around one function: its stats key (also its rate-limit key), its
    classifier, the backend its rate limit uses, its reports."""

    __slots__ = ("_budget", "classifier", "has_fallback", "key", "limit_backend")

    def __init__(self, key: str) -> None:
        self.key = key
        self.has_fallback = False
        self.classifier: Classifier = DEFAULT_CLASSIFIER
        self.limit_backend: Backend | None = None
        self._budget: tuple[RetryBudgetPolicy, Backend, RetryBudget] | None = None

    # -- what a guard asks -------------------------------------------------------------------

    @property
    def limits_on(self) -> bool:
        """``False`` while ``set_testing(True)``: admission, waits and cooldowns are off."""
        return not TESTING.active

    def attempts_allowed(self, max_tries: int) -> int:
        cap = TESTING.attempts
        return max_tries if cap is None else min(cap, max_tries)

    def check_budget_backend(self, policy: RetryBudgetPolicy | None) -> None:
        """At decoration: with no rate limit in the stack yet, the environment's backend must be
        valid, so a bad ``GLM_GUARD_BACKEND`` fails there rather than on a call."""
        if policy is not None and self.limit_backend is None:
            from .backends import get_backend

            get_backend(None)

    def retry_budget(self, policy: RetryBudgetPolicy | None) -> RetryBudget | None:
        """The key's retry budget under ``policy``, kept where the stack's rate limit keeps its
        state (else in the environment's backend); ``None`` when off or in testing mode."""
        if policy is None or TESTING.active:
            return None
        backend = self.limit_backend
        if backend is None:
            from .backends import get_backend  # the environment's, as it is now

            backend = get_backend(None)
        found = self._budget
        if found is None or found[0] is not policy or found[1] is not backend or found[2].key != self.key:
            found = self._budget = (policy, backend, backend.retry_budget(self.key, policy))
        return found[2]

    def backoff(self, seconds: float) -> float:
        """The sleep a retry should really make: none at all in testing mode."""
        return 0.0 if TESTING.active else seconds

    def verdict(self, error: BaseException) -> ErrorInfo:
        """What ``error`` means, decided once per attempt and kept on the exception."""
        found = getattr(error, _VERDICT, None)
        if isinstance(found, tuple) and len(found) == 2 and found[0] is self.classifier:
            info: ErrorInfo = found[1]
            return info
        info = self.classifier.classify(error)
        with contextlib.suppress(Exception):  # an exception that refuses attributes is classified again
            setattr(error, _VERDICT, (self.classifier, info))
        return info

    # -- what a guard reports ---------------------------------------------------------------

    def waited(self, seconds: float, timed_out: bool) -> None:
        """``rate_limited`` admitted a call after ``seconds``, or gave up (``timed_out``)."""
        if HUB.active:
            emit(WaitEvent(self.key, seconds, timed_out, _events.wall_clock()))

    def retrying(self, attempt: int, delay: float | None, info: ErrorInfo) -> None:
        """``retry_on_1302`` will try again after ``delay``; ``None``: it gave up."""
        if HUB.active:
            emit(RetryEvent(self.key, attempt, delay, info.code, delay is None, _events.wall_clock()))

    def cache_answered(self, hit: bool) -> None:
        """``cached_response`` answered without running the body (``hit``), or ran it."""
        if HUB.active:
            emit(CacheEvent(self.key, hit, _events.wall_clock()))

    def fell_back(self, error: BaseException) -> None:
        """``fallback`` served its answer instead of ``error``."""
        if HUB.active:
            emit(FallbackEvent(self.key, type(error).__name__, self.verdict(error).code, _events.wall_clock()))

    def attempt(self) -> _Report:
        """Times one run of the function (a context manager); reports it as it ends."""
        return _Attempt(self) if HUB.active else _UNREPORTED

    def call(self) -> _Report:
        """Times one call through the whole stack; reports it as it ends."""
        begin_call()  # the degraded mark then describes this call, whatever came before
        return _Call(self) if HUB.active else _UNREPORTED


class _Report:
    """One attempt or call being timed.  ``answered(result)`` notes the answer and passes it on;
    leaving the ``with`` block reports: an exception as a failure, a generator closed by its
    consumer as answered (it had what it wanted), a cancellation not at all."""

    __slots__ = ("result", "stack", "started")

    def __init__(self, stack: Stack | None) -> None:
        self.stack = stack
        self.started = time.perf_counter()
        self.result: object = None

    def answered(self, result: Any) -> Any:
        self.result = result
        return result

    def __enter__(self) -> _Report:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if error is None or isinstance(error, GeneratorExit):
            self.report(None)
        elif isinstance(error, Exception):
            self.report(error)

    def report(self, error: Exception | None) -> None:
        """Nothing to report: nobody listens."""


class _Attempt(_Report):
    __slots__ = ()

    def report(self, error: Exception | None) -> None:
        stack = self.stack
        assert stack is not None
        seconds = time.perf_counter() - self.started
        kind = code = None
        usage = None
        result = self.result
        if error is not None:
            info = stack.verdict(error)
            kind, code = info.kind, info.code or (None if info.status is None else str(info.status))
        elif result.__class__ not in _PLAIN:
            usage = usage_of(result)
            if isinstance(result, dict) and "error" in result:  # an error dict returned as a value
                found = stack.classifier.classify_result(result)
                if found.kind != "other":
                    kind, code = found.kind, found.code
        prompt, completion, total = (None, None, None) if usage is None else usage
        emit(AttemptEvent(stack.key, seconds, kind, code, prompt, completion, total, _events.wall_clock()))


class _Call(_Report):
    __slots__ = ()

    def report(self, error: Exception | None) -> None:
        stack = self.stack
        assert stack is not None
        outcome: Literal["success", "fallback", "error"] = "error"
        if error is None:
            outcome = "fallback" if stack.has_fallback and DEGRADED.get() else "success"
        name = None if error is None else type(error).__name__
        emit(CallEvent(stack.key, time.perf_counter() - self.started, outcome, name, _events.wall_clock()))


_UNREPORTED: Final = _Report(None)


def join(
    fn: Callable[..., Any],
    *,
    key: str | None = None,
    classifier: Classifier | None = None,
    fallback: bool = False,
    backend: object = None,
    backend_from_environment: bool = False,
    limit_backend: Backend | None = None,
) -> tuple[Callable[..., Any], Stack]:
    """``(what the new guard should call, the stack)`` for a guard applied to ``fn``.

    ``backend`` is where the guard keeps its state: one that shares stats may receive them.
    ``limit_backend`` is the one a rate limit keeps its state in, where a retry budget then lives.
    """
    found = getattr(fn, _ENTRY, None)
    if found is not None and found[0] is fn:  # fn is the entry of a glm_guard stack: join it
        inner, stack = found[1], found[2]
    else:
        stack = Stack(default_key(fn))
        inner = attempts(fn, stack)
    if key is not None:
        stack.key = key
    if classifier is not None:
        stack.classifier = classifier
    if fallback:
        stack.has_fallback = True
    if limit_backend is not None:
        stack.limit_backend = limit_backend
    _recorder.ensure_started()
    if backend is not None:
        _recorder.RECORDER.note_backend(backend, chosen_by_environment=backend_from_environment)
    return inner, stack


# -- usage ---------------------------------------------------------------------------------------


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _read(usage: object, name: str) -> object:
    return usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)


def usage_of(result: object) -> tuple[int, int, int] | None:
    """Token counts from a result's ``usage`` (a dict or an SDK object); ``None`` when it has none."""
    try:
        usage = result.get("usage") if isinstance(result, dict) else getattr(result, "usage", None)
        if usage is None:
            return None
        prompt = _number(_read(usage, "prompt_tokens"))
        if prompt is None:
            prompt = _number(_read(usage, "input_tokens"))  # Anthropic's names
        completion = _number(_read(usage, "completion_tokens"))
        if completion is None:
            completion = _number(_read(usage, "output_tokens"))
        total = _number(_read(usage, "total_tokens"))
    except Exception:  # an odd result object must never break the call
        return None
    if prompt is None and completion is None and total is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    return prompt, completion, prompt + completion if total is None else total


def _carries_usage(item: object) -> bool:
    if isinstance(item, dict):
        return bool(item.get("usage"))
    try:
        return getattr(item, "usage", None) is not None
    except Exception:
        return False


# -- the innermost wrapper: every run of the function is an attempt ---------------------------


def attempts(fn: Callable[..., Any], stack: Stack) -> Callable[..., Any]:
    """``fn``, reporting each run of it as one attempt."""
    kind = kind_of(fn)
    if kind == "async":

        @functools.wraps(fn)
        async def async_attempt(*args: Any, **kwargs: Any) -> Any:
            with stack.attempt() as attempt:
                return attempt.answered(await fn(*args, **kwargs))

        return async_attempt

    if kind == "sync":

        @functools.wraps(fn)
        def sync_attempt(*args: Any, **kwargs: Any) -> Any:
            with stack.attempt() as attempt:
                return attempt.answered(fn(*args, **kwargs))

        return sync_attempt

    if kind == "generator":

        @functools.wraps(fn)
        def generator_attempt(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            # A stream is one attempt, from the request to its last chunk (or its error).
            with stack.attempt() as attempt:
                return (yield from _Watched(fn(*args, **kwargs), attempt))

        return generator_attempt

    @functools.wraps(fn)
    async def async_generator_attempt(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        with stack.attempt() as attempt:
            async with contextlib.aclosing(fn(*args, **kwargs)) as stream:  # closed at once, not by gc
                async for item in stream:
                    yield _seen(attempt, item)

    return async_generator_attempt


def _seen(attempt: _Report, item: Any) -> Any:
    """A streamed chunk passes on; the last one that carries ``usage`` is the attempt's answer."""
    if _carries_usage(item):
        attempt.answered(item)
    return item


class _Watched:
    """A generator seen through: every method forwarded, each chunk shown to the attempt."""

    __slots__ = ("_attempt", "_stream")

    def __init__(self, stream: Generator[Any, Any, Any], attempt: _Report) -> None:
        self._stream = stream
        self._attempt = attempt

    def __iter__(self) -> _Watched:
        return self

    def __next__(self) -> Any:
        return _seen(self._attempt, next(self._stream))

    def send(self, value: Any) -> Any:
        return _seen(self._attempt, self._stream.send(value))

    def throw(self, error: BaseException) -> Any:
        return _seen(self._attempt, self._stream.throw(error))

    def close(self) -> None:
        self._stream.close()


# -- the outermost wrapper: the call as its caller saw it --------------------------------------


def entry(layer: Callable[..., Any], stack: Stack) -> Callable[..., Any]:
    """``layer`` (a guard's wrapper), reporting the call when it is the outermost guard."""
    kind = kind_of(layer)
    wrapper: Callable[..., Any]
    if kind == "async":

        @functools.wraps(layer)
        async def async_entry(*args: Any, **kwargs: Any) -> Any:
            with stack.call() as call:
                return call.answered(await layer(*args, **kwargs))

        wrapper = async_entry

    elif kind == "sync":

        @functools.wraps(layer)
        def sync_entry(*args: Any, **kwargs: Any) -> Any:
            with stack.call() as call:
                return call.answered(layer(*args, **kwargs))

        wrapper = sync_entry

    elif kind == "generator":

        @functools.wraps(layer)
        def generator_entry(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            with stack.call():  # a consumer that stops reading had its answer
                return (yield from layer(*args, **kwargs))

        wrapper = generator_entry

    else:

        @functools.wraps(layer)
        async def async_generator_entry(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            with stack.call():
                async with contextlib.aclosing(layer(*args, **kwargs)) as stream:
                    async for item in stream:
                        yield item

        wrapper = async_generator_entry

    setattr(wrapper, _ENTRY, (wrapper, layer, stack))
    return wrapper
