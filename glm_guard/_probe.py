"""Where the decorators report what they did: the call as the caller saw it, and each attempt.

A stack of guards is settled at decoration time, so no call needs a context variable to
learn its place in it:

- the **innermost** guard (the one applied first, right on the user's function) runs the
  function through :func:`attempts`, which reports every run: outcome, duration, error class
  and code, tokens.  So each 1302 the provider sends is counted once, retried or not;
- the **outermost** guard reports the call: what the caller got (an answer, a fallback, an
  error) and how long it took in all (waits, retries and backoff included).  Each guard
  returns an *entry* function that does this; a guard applied on top of an entry unwraps it
  and puts its own entry outside, so only the outermost entry of a stack ever runs.  Where
  the cost matters most a guard is its own entry (``entry(..., reporting=)``): a cache hit at
  the top of a stack, and a lone in-process ``rate_limited``, each make one stats record;
- the layers in between report their own work: waits, retries, cache hits, fallbacks.

All of a stack shares one :class:`Label`, whose ``key`` is the stack's stats key: the
``rate_limited`` key when one is named, else the function's ``module.qualname``.  A
decorator that is not glm_guard's, placed between two guards, splits the stack in two.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Final

from . import _stats
from ._classify import DEFAULT_CLASSIFIER, ErrorInfo
from ._errors import RateLimitTimeout
from ._events import (
    HUB,
    AttemptEvent,
    CacheEvent,
    CallEvent,
    FallbackEvent,
    RetryEvent,
    WaitEvent,
    deliver,
)
from ._marks import is_degraded
from ._stats import ATTEMPT, CACHE, CALL, CALL_ATTEMPT, ERROR, FALLBACK, HIT_CALL, RETRY, SUCCESS, WAIT
from ._wrapping import default_key, kind_of

__all__ = ["Label", "attach"]

#: A permit granted faster than this was not waited for (a Redis round trip is ~0.2 ms).
WAIT_THRESHOLD: Final = 0.001
_STACK: Final = "_glm_guard_stack"
_RAW: Final = "_glm_guard_attempts_of"
_OUTCOMES: Final = ("success", "fallback", "error")
_MAX_CODES: Final = 64  # distinct codes kept apart; a flood of odd codes must not grow the counters

perf_counter = time.perf_counter
_append = HUB.buffer.append  # the deque is never replaced, only cleared
_codes: dict[str, str] = {}
_PLAIN: Final = frozenset({str, bytes, int, float, bool, type(None)})  # results that carry no usage


class Label:
    """The stats key of one stack of guards, and whether it holds a ``fallback``."""

    __slots__ = ("has_fallback", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self.has_fallback = False


def attach(
    fn: Callable[..., Any], *, key: str | None = None, fallback: bool = False
) -> tuple[Callable[..., Any], Label]:
    """``(what the new guard should call, the stack's label)`` for a guard applied to ``fn``."""
    stack = getattr(fn, _STACK, None)
    if stack is not None and stack[0] is fn:  # fn is the entry of a glm_guard stack: join it
        inner, label = stack[1], stack[2]
    else:
        label = Label(default_key(fn))
        inner = attempts(fn, label)
    if key is not None:
        label.key = key
    if fallback:
        label.has_fallback = True
    _stats.ensure_started()
    return inner, label


def note_default_backend(backend: object) -> None:
    """A decorator resolved ``GLM_GUARD_BACKEND``: with Redis there, the stats go there too."""
    _stats.RECORDER.attach_default(backend)


# -- what each report records ----------------------------------------------------------------------


def _code_name(info: ErrorInfo) -> str:
    raw = info.code or (str(info.status) if info.status is not None else "unknown")
    name = _codes.get(raw)
    if name is None:
        plain = 0 < len(raw) <= 40 and raw.isascii() and all(ch.isalnum() or ch in "_.-" for ch in raw)
        name = raw if plain and len(_codes) < _MAX_CODES else "unknown"
        if len(_codes) < _MAX_CODES:
            _codes[raw] = name
    return name


def _field(info: ErrorInfo) -> str:
    if info.kind in ("rate_limit", "permanent"):
        return f"err.{info.kind}.{_code_name(info)}"
    return f"err.{info.kind}"


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


def _attempt_done(label: Label, started: float, error: BaseException | None, result: object) -> None:
    ended = perf_counter()
    info = None
    usage = None
    if error is not None:
        info = DEFAULT_CLASSIFIER.classify(error)
    elif result.__class__ not in _PLAIN:
        usage = usage_of(result)
        if isinstance(result, dict) and "error" in result:  # an error dict returned as a value
            found = DEFAULT_CLASSIFIER.classify_result(result)
            info = found if found.kind != "other" else None
    if HUB.recording:
        _append((ATTEMPT, label.key, ended, ended - started, None if info is None else _field(info), usage))
    if HUB.subscribers:
        deliver(
            AttemptEvent(
                label.key,
                ended - started,
                None if info is None else info.kind,
                None if info is None else info.code,
                None if usage is None else usage[0],
                None if usage is None else usage[1],
                None if usage is None else usage[2],
                time.time(),
            )
        )


def _call_done(label: Label, started: float, outcome: int, error: BaseException | None) -> None:
    ended = perf_counter()
    if HUB.recording:
        _append((CALL, label.key, ended, ended - started, outcome))
    if HUB.subscribers:
        name = None if error is None else type(error).__name__
        deliver(CallEvent(label.key, ended - started, _OUTCOMES[outcome], name, time.time()))


def waited(label: Label, started: float, timed_out: bool) -> None:
    ended = perf_counter()
    seconds = ended - started
    if HUB.recording and (timed_out or seconds >= WAIT_THRESHOLD):
        _append((WAIT, label.key, ended, seconds, timed_out))
    if HUB.subscribers:
        deliver(WaitEvent(label.key, seconds, timed_out, time.time()))


def retried(label: Label, attempt: int, delay: float | None, code: str | None) -> None:
    """``retry_on_1302`` will try again after ``delay`` (``None``: it gave up)."""
    if not HUB.active:
        return
    exhausted = delay is None
    if HUB.recording:
        _append((RETRY, label.key, perf_counter(), exhausted))
    if HUB.subscribers:
        deliver(RetryEvent(label.key, attempt, delay, code, exhausted, time.time()))


def cached(label: Label, hit: bool) -> None:
    if not HUB.active:
        return
    if HUB.recording:
        _append((CACHE, label.key, perf_counter(), hit))
    if HUB.subscribers:
        deliver(CacheEvent(label.key, hit, time.time()))


def fell_back(label: Label, error: BaseException) -> None:
    """``fallback`` served its answer; the outermost guard counts the call as a fallback."""
    if HUB.subscribers:
        code = DEFAULT_CLASSIFIER.classify(error).code
        deliver(FallbackEvent(label.key, type(error).__name__, code, time.time()))


# -- timing a permit -----------------------------------------------------------------------------


def acquire(limiter: Any, policy: Any, max_wait: float | None, label: Label) -> Any:
    if not HUB.active:
        return limiter.acquire(policy, max_wait)
    started = perf_counter()
    try:
        permit = limiter.acquire(policy, max_wait)
    except RateLimitTimeout:
        waited(label, started, True)
        raise
    if HUB.subscribers or perf_counter() - started >= WAIT_THRESHOLD:
        waited(label, started, False)
    return permit


async def acquire_async(limiter: Any, policy: Any, max_wait: float | None, label: Label) -> Any:
    if not HUB.active:
        return await limiter.acquire_async(policy, max_wait)
    started = perf_counter()
    try:
        permit = await limiter.acquire_async(policy, max_wait)
    except RateLimitTimeout:
        waited(label, started, True)
        raise
    if HUB.subscribers or perf_counter() - started >= WAIT_THRESHOLD:
        waited(label, started, False)
    return permit


# -- the two wrappers ------------------------------------------------------------------------------


def unreported(inner: Callable[..., Any]) -> Callable[..., Any] | None:
    """The user's own function if ``inner`` is just its attempt report (no guard below)."""
    raw = getattr(inner, _RAW, None)
    return raw[1] if raw is not None and raw[0] is inner else None


def solo_answered(label: Label, started: float, began: float, result: object) -> None:
    """A one-guard stack's attempt, begun at ``began``, answered a call begun at ``started``."""
    if result.__class__ in _PLAIN and HUB.recording and not HUB.subscribers and not label.has_fallback:
        ended = perf_counter()
        _append((CALL_ATTEMPT, label.key, ended, ended - started, SUCCESS, ended - began))
    else:
        _attempt_done(label, began, None, result)
        call_answered(label, started)


def solo_failed(label: Label, started: float, began: float, error: BaseException) -> None:
    _attempt_done(label, began, error, None)
    _call_done(label, started, ERROR, error)


def attempts(fn: Callable[..., Any], label: Label) -> Callable[..., Any]:
    """``fn``, reporting each run of it as one attempt."""
    wrapper = _attempts(fn, label)
    setattr(wrapper, _RAW, (wrapper, fn))
    return wrapper


def _attempts(fn: Callable[..., Any], label: Label) -> Callable[..., Any]:
    kind = kind_of(fn)
    if kind == "async":

        @functools.wraps(fn)
        async def async_attempt(*args: Any, **kwargs: Any) -> Any:
            if not HUB.active:
                return await fn(*args, **kwargs)
            started = perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                _attempt_done(label, started, error, None)
                raise
            if result.__class__ in _PLAIN and not HUB.subscribers:  # nothing to read: the short way
                ended = perf_counter()
                _append((ATTEMPT, label.key, ended, ended - started, None, None))
            else:
                _attempt_done(label, started, None, result)
            return result

        return async_attempt

    if kind == "sync":

        @functools.wraps(fn)
        def sync_attempt(*args: Any, **kwargs: Any) -> Any:
            if not HUB.active:
                return fn(*args, **kwargs)
            started = perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                _attempt_done(label, started, error, None)
                raise
            if result.__class__ in _PLAIN and not HUB.subscribers:  # nothing to read: the short way
                ended = perf_counter()
                _append((ATTEMPT, label.key, ended, ended - started, None, None))
            else:
                _attempt_done(label, started, None, result)
            return result

        return sync_attempt

    if kind == "generator":

        @functools.wraps(fn)
        def generator_attempt(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            # A stream is one attempt, from the request to its last chunk (or its error); one
            # closed early by its consumer counts as answered.
            started = perf_counter()
            watched = _Watched(fn(*args, **kwargs))
            try:
                result = yield from watched
            except Exception as error:
                if HUB.active:
                    _attempt_done(label, started, error, None)
                raise
            except GeneratorExit:
                if HUB.active:
                    _attempt_done(label, started, None, watched.usage)
                raise
            if HUB.active:
                _attempt_done(label, started, None, watched.usage)
            return result

        return generator_attempt

    @functools.wraps(fn)
    async def async_generator_attempt(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        started = perf_counter()
        usage: object = None
        try:
            async with contextlib.aclosing(fn(*args, **kwargs)) as stream:  # closed at once, not by gc
                async for item in stream:
                    if _carries_usage(item):
                        usage = item
                    yield item
        except Exception as error:
            if HUB.active:
                _attempt_done(label, started, error, None)
            raise
        except GeneratorExit:
            if HUB.active:
                _attempt_done(label, started, None, usage)
            raise
        if HUB.active:
            _attempt_done(label, started, None, usage)

    return async_generator_attempt


def _carries_usage(item: object) -> bool:
    if isinstance(item, dict):
        return bool(item.get("usage"))
    try:
        return getattr(item, "usage", None) is not None
    except Exception:
        return False


class _Watched:
    """A generator seen through: every method forwarded, the last chunk with ``usage`` kept."""

    __slots__ = ("_stream", "usage")

    def __init__(self, stream: Generator[Any, Any, Any]) -> None:
        self._stream = stream
        self.usage: object = None

    def __iter__(self) -> _Watched:
        return self

    def _see(self, item: Any) -> Any:
        if _carries_usage(item):
            self.usage = item
        return item

    def __next__(self) -> Any:
        return self._see(next(self._stream))

    def send(self, value: Any) -> Any:
        return self._see(self._stream.send(value))

    def throw(self, error: BaseException) -> Any:
        return self._see(self._stream.throw(error))

    def close(self) -> None:
        self._stream.close()


def call_answered(label: Label, started: float) -> None:
    """The outermost guard returned an answer (the provider's, or a fallback's)."""
    if label.has_fallback or HUB.subscribers:
        _call_done(label, started, FALLBACK if label.has_fallback and is_degraded() else SUCCESS, None)
    else:
        ended = perf_counter()
        _append((CALL, label.key, ended, ended - started, SUCCESS))


def call_failed(label: Label, started: float, error: BaseException) -> None:
    _call_done(label, started, ERROR, error)


def answered_from_cache(label: Label, started: float, ended: float) -> None:
    """The outermost guard answered from its cache: one record for the hit and the call."""
    if HUB.recording:
        _append((HIT_CALL, label.key, ended, ended - started))
    if HUB.subscribers:
        now = time.time()
        deliver(CacheEvent(label.key, True, now))
        deliver(CallEvent(label.key, ended - started, "success", None, now))


def entry(
    layer: Callable[..., Any], label: Label, *, reporting: Callable[..., Any] | None = None
) -> Callable[..., Any]:
    """``layer`` (a guard's wrapper), reporting the call when it is the outermost guard.

    ``reporting`` is the guard's own outermost flavour, which reports the call itself; a
    guard applied on top of it still joins the stack through ``layer``.
    """
    if reporting is not None:
        setattr(reporting, _STACK, (reporting, layer, label))
        return reporting
    kind = kind_of(layer)
    wrapper: Callable[..., Any]
    if kind == "async":

        @functools.wraps(layer)
        async def async_entry(*args: Any, **kwargs: Any) -> Any:
            if not HUB.active:
                return await layer(*args, **kwargs)
            started = perf_counter()
            try:
                result = await layer(*args, **kwargs)
            except Exception as error:
                _call_done(label, started, ERROR, error)
                raise
            call_answered(label, started)
            return result

        wrapper = async_entry

    elif kind == "sync":

        @functools.wraps(layer)
        def sync_entry(*args: Any, **kwargs: Any) -> Any:
            if not HUB.active:
                return layer(*args, **kwargs)
            started = perf_counter()
            try:
                result = layer(*args, **kwargs)
            except Exception as error:
                _call_done(label, started, ERROR, error)
                raise
            call_answered(label, started)
            return result

        wrapper = sync_entry

    elif kind == "generator":

        @functools.wraps(layer)
        def generator_entry(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            started = perf_counter()
            try:
                result = yield from layer(*args, **kwargs)
            except Exception as error:
                if HUB.active:
                    _call_done(label, started, ERROR, error)
                raise
            except GeneratorExit:  # the consumer stopped reading: it had its answer
                if HUB.active:
                    _call_done(label, started, SUCCESS, None)
                raise
            if HUB.active:
                _call_done(label, started, SUCCESS, None)
            return result

        wrapper = generator_entry

    else:

        @functools.wraps(layer)
        async def async_generator_entry(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            started = perf_counter()
            try:
                async with contextlib.aclosing(layer(*args, **kwargs)) as stream:
                    async for item in stream:
                        yield item
            except Exception as error:
                if HUB.active:
                    _call_done(label, started, ERROR, error)
                raise
            except GeneratorExit:
                if HUB.active:
                    _call_done(label, started, SUCCESS, None)
                raise
            if HUB.active:
                _call_done(label, started, SUCCESS, None)

        wrapper = async_generator_entry

    setattr(wrapper, _STACK, (wrapper, layer, label))
    return wrapper
