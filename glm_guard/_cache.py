"""``@cached_response``: the same arguments within ``ttl`` run the body once.

Never stored: exceptions, and answers marked degraded by ``fallback`` (in whatever order
the decorators are stacked).  ``None`` is a value like any other.  Concurrent identical
calls in one process are coalesced: one runs the body, the others wait for its outcome.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, ParamSpec, TypeVar, cast, overload

from . import _probe, _validate
from ._cache_keys import KeyMaker
from ._config import get_settings
from ._errors import ConfigurationError
from ._events import HUB
from ._marks import DEGRADED, begin_call, mark_degraded, result_degraded
from ._stats import HIT_CALL
from ._wrapping import default_key, kind_of, unwrap_descriptor
from .backends import CacheStore, get_backend
from .backends._base import MISSING, Backend

__all__ = ["cached_response"]

perf_counter = time.perf_counter
record = HUB.buffer.append  # the deque is never replaced, only cleared

P = ParamSpec("P")
R = TypeVar("R")


class _LeaderGone(Exception):
    """The call the others were waiting on was cancelled; one of them takes over."""


class _Pending:
    """One call running now, and the identical calls waiting for its outcome.

    Most calls are never joined, so a call costs this small object and nothing more; a
    follower brings its own way to be woken (an event, or a future on its own loop).
    """

    __slots__ = ("followers", "outcome")

    def __init__(self) -> None:
        self.followers: list[threading.Event | tuple[Any, Any]] = []
        self.outcome: tuple[object, bool] | BaseException | None = None

    def result(self) -> tuple[object, bool]:
        outcome = self.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome


class _InFlight:
    """Calls running now, by key, so identical concurrent calls share one outcome."""

    __slots__ = ("_calls", "_lock")

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Pending] = {}
        self._lock = threading.Lock()

    def lead(self, key: Hashable) -> _Pending | None:
        """Register the caller as the one running ``key``; ``None`` if another already is."""
        lock = self._lock
        lock.acquire()  # explicit: on the hot path a ``with`` block costs twice as much
        try:
            if key in self._calls:
                return None
            pending = self._calls[key] = _Pending()
            return pending
        finally:
            lock.release()

    def follow(self, key: Hashable, waker: threading.Event | tuple[Any, Any]) -> _Pending | None:
        """Wait on the call running ``key`` (woken through ``waker``); ``None`` if it just ended."""
        with self._lock:
            pending = self._calls.get(key)
            if pending is not None:
                pending.followers.append(waker)
            return pending

    def settle(self, key: Hashable, pending: _Pending, outcome: tuple[object, bool] | BaseException) -> None:
        """End the leader's call with ``outcome`` and wake whoever waits for it."""
        lock = self._lock
        lock.acquire()
        try:
            if self._calls.get(key) is pending:
                del self._calls[key]
            pending.outcome = outcome
            followers = pending.followers
        finally:
            lock.release()
        for waker in followers:
            if isinstance(waker, threading.Event):
                waker.set()
            else:
                loop, future = waker
                with contextlib.suppress(RuntimeError):  # the follower's loop is gone
                    loop.call_soon_threadsafe(_wake_future, future)


def _wake_future(future: Any) -> None:
    if not future.done():
        future.set_result(None)


@overload
def cached_response(ttl: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def cached_response(
    ttl: float | None = 3600,
    *,
    maxsize: int = 1024,
    key: str | Callable[..., object] | None = None,
    backend: str | Backend | None = None,
    serializer: str = "json",
    unkeyable: str = "raise",
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def cached_response(
    ttl: Any = 3600,
    *,
    maxsize: int = 1024,
    key: str | Callable[..., object] | None = None,
    backend: str | Backend | None = None,
    serializer: str = "json",
    unkeyable: str = "raise",
) -> Any:
    """Cache results by argument value for ``ttl`` seconds (``None``: until evicted).

    ``maxsize`` bounds the local cache (LRU).  ``key`` is either a namespace string (default:
    the function's ``module.qualname``; functions sharing a namespace on a shared backend
    share entries) or a callable taking the function's arguments and returning the
    JSON-serialisable material of the key.  ``self``/``cls`` are left out of the key.

    On a shared backend values are stored as JSON (``serializer="json"``, the default:
    results JSON cannot give back unchanged are returned but not cached).  ``"pickle"``
    stores any picklable value, signed with ``GLM_GUARD_CACHE_SECRET``; entries without a
    valid signature are misses, never unpickled.

    An argument that cannot be part of a key raises ``TypeError`` naming it
    (``unkeyable="raise"``), or makes that call bypass the cache (``unkeyable="bypass"``).
    """
    if callable(ttl):
        return cached_response()(ttl)
    lifetime = _validate.seconds("ttl", ttl, optional=True)
    size = cast(int, _validate.positive_int("maxsize", maxsize))
    if key is not None and not callable(key):
        _validate.key_name("key", key)
    if unkeyable not in ("raise", "bypass"):
        raise ConfigurationError("unkeyable", f"must be 'raise' or 'bypass', got {unkeyable!r}")
    if serializer not in ("json", "pickle"):
        raise ConfigurationError("serializer", f"must be 'json' or 'pickle', got {serializer!r}")
    if serializer == "pickle" and not get_settings().cache_secret:
        raise ConfigurationError("GLM_GUARD_CACHE_SECRET", "must be set to sign pickled cache entries")
    store = get_backend(backend)
    if backend is None:
        _probe.note_default_backend(store)

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        fn, rewrap = unwrap_descriptor(target)
        if kind_of(fn) in ("generator", "async_generator"):
            raise ConfigurationError(
                "cached_response",
                f"cannot cache the generator function {default_key(fn)}; cache a function that returns the full answer",
            )
        namespace = key if isinstance(key, str) else default_key(fn)
        cache = store.cache(namespace, ttl=lifetime, maxsize=size, serializer=serializer, owner=default_key(fn))
        make_key = KeyMaker(fn, namespace, key if callable(key) else None, stable=cache.shared).key_of
        inner, label = _probe.attach(fn)
        layer, outermost = _wrap(
            inner, cache, make_key, store_values=lifetime != 0, bypass_unkeyable=unkeyable == "bypass", label=label
        )
        return cast(Callable[P, R], rewrap(_probe.entry(layer, label, reporting=outermost)))

    return decorate


_POLL_SECONDS = 0.05


def _await_other_process(cache: CacheStore, digest: Any) -> tuple[bool, object]:
    """Wait for the process holding the claim; ``(False, None)`` means: compute it yourself.

    Ends when the entry appears, or when the claim is free again (the other process failed,
    or died and its claim expired), in which case this caller now holds the claim.
    """
    while True:
        time.sleep(_POLL_SECONDS)
        hit, value = cache.get(digest)
        if hit:
            return True, value
        if cache.claim(digest):
            return False, None


async def _await_other_process_async(cache: CacheStore, digest: Any) -> tuple[bool, object]:
    import asyncio

    while True:
        await asyncio.sleep(_POLL_SECONDS)
        hit, value = await cache.get_async(digest)
        if hit:
            return True, value
        if await cache.claim_async(digest):
            return False, None


def _count_hit(label: _probe.Label) -> None:
    """A call answered without running the body: a hit, and a fresh degraded mark for the caller."""
    _probe.cached(label, True)
    begin_call()


def _wrap(
    fn: Callable[..., Any],
    cache: CacheStore,
    make_key: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    *,
    store_values: bool,
    bypass_unkeyable: bool,
    label: _probe.Label,
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(the guard as a layer of a stack, the guard reporting the call as the outermost one)``.

    The outermost flavour does the entry's work itself, so a cache hit at the top of a stack,
    the common case, costs one wrapper and one stats record instead of two of each.
    """
    in_flight = _InFlight()
    # A store in this process answers at once and needs no claim across processes: its
    # async callers use the plain methods and skip the claim round trips.
    shared = cache.shared
    get: Callable[[Any], tuple[bool, object]] = cache.get
    put: Callable[[Any, object], None] = cache.set
    read = cache.reader()  # the outermost guard's hit path: one call, no tuple

    if kind_of(fn) == "async":
        import asyncio

        async def lookup_async(key: Any) -> tuple[bool, object]:
            return await cache.get_async(key) if shared else get(key)

        async def fill_async(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            """A miss: wait for an identical call running now, or run the body and store its answer."""
            while True:
                pending = in_flight.lead(key)
                if pending is None:  # an identical call is running: wait for its outcome
                    loop = asyncio.get_running_loop()
                    woken = loop.create_future()
                    pending = in_flight.follow(key, (loop, woken))
                    if pending is not None:
                        await woken
                        try:
                            value, degraded = pending.result()
                        except _LeaderGone:
                            pass  # cancelled: one of its followers takes over
                        else:
                            _count_hit(label)  # coalesced: answered without running the body
                            if degraded:
                                mark_degraded()
                            return value
                    hit, value = await lookup_async(key)  # it ended: its answer may be stored now
                    if hit:
                        _count_hit(label)
                        return value
                    continue
                claimed = False
                outcome: tuple[object, bool] | BaseException | None = None
                try:
                    if shared:
                        claimed = await cache.claim_async(key)
                        if claimed:  # the holder may have stored its answer and let go since we looked
                            hit, value = await cache.get_async(key)
                        else:  # another process is computing it: wait for its answer (or its claim)
                            hit, value = await _await_other_process_async(cache, key)
                            claimed = not hit
                        if hit:
                            outcome = (value, False)
                            _count_hit(label)
                            return value
                    _probe.cached(label, False)
                    begin_call()
                    value = await fn(*args, **kwargs)
                    degraded = result_degraded(value)
                    if store_values and not degraded:
                        if shared:
                            await cache.set_async(key, value)
                        else:
                            put(key, value)
                    outcome = (value, degraded)
                except Exception as error:
                    outcome = error
                    raise
                finally:
                    # Settled before the claim goes back: waiters must never depend on that
                    # round trip succeeding (or on this task not being cancelled during it).
                    in_flight.settle(key, pending, _LeaderGone() if outcome is None else outcome)
                    if claimed:
                        await cache.unclaim_async(key)
                return value

        @functools.wraps(fn)
        async def async_layer(*args: Any, **kwargs: Any) -> Any:
            try:
                key = make_key(args, kwargs)
            except TypeError:
                if not bypass_unkeyable:
                    raise
                begin_call()
                return await fn(*args, **kwargs)
            hit, value = await cache.get_async(key) if shared else get(key)
            if hit:
                _count_hit(label)
                return value
            return await fill_async(key, args, kwargs)

        @functools.wraps(fn)
        async def async_outermost(*args: Any, **kwargs: Any) -> Any:
            if not HUB.active:
                return await async_layer(*args, **kwargs)
            started = perf_counter()
            try:
                try:
                    key = make_key(args, kwargs)
                except TypeError:
                    if not bypass_unkeyable:
                        raise
                    begin_call()
                    value = await fn(*args, **kwargs)
                else:
                    if shared:
                        hit, value = await cache.get_async(key)
                        if not hit:
                            value = MISSING
                    else:
                        value = read(key)
                    if value is not MISSING:  # the hot path, inlined: begin_call() and answered_from_cache()
                        if DEGRADED.get():
                            DEGRADED.set(False)
                        ended = perf_counter()
                        if HUB.subscribers or not HUB.recording:
                            _probe.answered_from_cache(label, started, ended)
                        else:
                            record((HIT_CALL, label.key, ended, ended - started))
                        return value
                    value = await fill_async(key, args, kwargs)
            except Exception as error:
                _probe.call_failed(label, started, error)
                raise
            _probe.call_answered(label, started)
            return value

        return async_layer, async_outermost

    def fill(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A miss: wait for an identical call running now, or run the body and store its answer."""
        while True:
            pending = in_flight.lead(key)
            if pending is None:
                woken = threading.Event()
                pending = in_flight.follow(key, woken)
                if pending is not None:
                    woken.wait()
                    try:
                        value, degraded = pending.result()
                    except _LeaderGone:
                        pass
                    else:
                        _count_hit(label)
                        if degraded:
                            mark_degraded()
                        return value
                hit, value = get(key)
                if hit:
                    _count_hit(label)
                    return value
                continue
            claimed = False
            outcome: tuple[object, bool] | BaseException | None = None
            try:
                if shared:
                    claimed = cache.claim(key)
                    if claimed:  # the holder may have stored its answer and let go since we looked
                        hit, value = cache.get(key)
                    else:  # another process is computing it: wait for its answer (or its claim)
                        hit, value = _await_other_process(cache, key)
                        claimed = not hit
                    if hit:
                        outcome = (value, False)
                        _count_hit(label)
                        return value
                _probe.cached(label, False)
                begin_call()
                value = fn(*args, **kwargs)
                degraded = result_degraded(value)
                if store_values and not degraded:
                    put(key, value)
                outcome = (value, degraded)
            except Exception as error:
                outcome = error
                raise
            finally:
                # Settled before the claim goes back: waiters must never depend on that
                # round trip succeeding (or on this task not being cancelled during it).
                in_flight.settle(key, pending, _LeaderGone() if outcome is None else outcome)
                if claimed:
                    cache.unclaim(key)
            return value

    @functools.wraps(fn)
    def sync_layer(*args: Any, **kwargs: Any) -> Any:
        try:
            key = make_key(args, kwargs)
        except TypeError:
            if not bypass_unkeyable:
                raise
            begin_call()
            return fn(*args, **kwargs)
        hit, value = get(key)
        if hit:
            _count_hit(label)
            return value
        return fill(key, args, kwargs)

    @functools.wraps(fn)
    def sync_outermost(*args: Any, **kwargs: Any) -> Any:
        if not HUB.active:
            return sync_layer(*args, **kwargs)
        started = perf_counter()
        try:
            try:
                key = make_key(args, kwargs)
            except TypeError:
                if not bypass_unkeyable:
                    raise
                begin_call()
                value = fn(*args, **kwargs)
            else:
                value = read(key)
                if value is not MISSING:  # the hot path, inlined: begin_call() and answered_from_cache()
                    if DEGRADED.get():
                        DEGRADED.set(False)
                    ended = perf_counter()
                    if HUB.subscribers or not HUB.recording:
                        _probe.answered_from_cache(label, started, ended)
                    else:
                        record((HIT_CALL, label.key, ended, ended - started))
                    return value
                value = fill(key, args, kwargs)
        except Exception as error:
            _probe.call_failed(label, started, error)
            raise
        _probe.call_answered(label, started)
        return value

    return sync_layer, sync_outermost
