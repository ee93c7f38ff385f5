"""``@cached_response``: the same arguments within ``ttl`` run the body once.

Never stored: exceptions, and answers marked degraded by ``fallback`` (in whatever order
the decorators are stacked).  ``None`` is a value like any other.  Concurrent identical
calls in one process are coalesced: one runs the body, the others wait for its outcome.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from . import _probe, _validate
from ._cache_keys import KeyMaker
from ._config import get_settings
from ._errors import ConfigurationError
from ._marks import begin_call, mark_degraded, result_degraded
from ._wrapping import default_key, kind_of, unwrap_descriptor
from .backends import CacheStore, get_backend
from .backends._base import Backend

__all__ = ["cached_response"]

P = ParamSpec("P")
R = TypeVar("R")


class _LeaderGone(Exception):
    """The call the others were waiting on was cancelled; one of them takes over."""


class _InFlight:
    """Calls running now, by key, so identical concurrent calls share one outcome."""

    __slots__ = ("_calls", "_lock")

    def __init__(self) -> None:
        self._calls: dict[str, concurrent.futures.Future[tuple[object, bool]]] = {}
        self._lock = threading.Lock()

    def join(self, key: str) -> tuple[bool, concurrent.futures.Future[tuple[object, bool]]]:
        """``(True, future)`` if the caller must run the body and settle ``future``."""
        with self._lock:
            future = self._calls.get(key)
            if future is not None:
                return False, future
            future = concurrent.futures.Future()
            future.set_running_or_notify_cancel()  # no follower can cancel it for the rest
            self._calls[key] = future
            return True, future

    def leave(self, key: str) -> None:
        with self._lock:
            self._calls.pop(key, None)


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
        make_key = KeyMaker(fn, namespace, key if callable(key) else None)
        cache = store.cache(namespace, ttl=lifetime, maxsize=size, serializer=serializer, owner=default_key(fn))
        inner, label = _probe.attach(fn)
        wrapped = _wrap(
            inner, cache, make_key, store_values=lifetime != 0, bypass_unkeyable=unkeyable == "bypass", label=label
        )
        return cast(Callable[P, R], rewrap(_probe.entry(wrapped, label)))

    return decorate


_POLL_SECONDS = 0.05


def _await_other_process(cache: CacheStore, digest: str) -> tuple[bool, object]:
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


async def _await_other_process_async(cache: CacheStore, digest: str) -> tuple[bool, object]:
    import asyncio

    while True:
        await asyncio.sleep(_POLL_SECONDS)
        hit, value = await cache.get_async(digest)
        if hit:
            return True, value
        if await cache.claim_async(digest):
            return False, None


def _wrap(
    fn: Callable[..., Any],
    cache: CacheStore,
    make_key: KeyMaker,
    *,
    store_values: bool,
    bypass_unkeyable: bool,
    label: _probe.Label,
) -> Callable[..., Any]:
    in_flight = _InFlight()

    if kind_of(fn) == "async":
        import asyncio

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                digest = make_key(args, kwargs)
            except TypeError:
                if not bypass_unkeyable:
                    raise
                begin_call()
                return await fn(*args, **kwargs)
            while True:
                hit, value = await cache.get_async(digest)
                if hit:
                    _probe.cached(label, True)
                    begin_call()
                    return value
                leader, future = in_flight.join(digest)
                if not leader:
                    try:
                        value, degraded = await asyncio.wrap_future(future)
                    except _LeaderGone:
                        continue
                    _probe.cached(label, True)  # coalesced: answered without running the body
                    begin_call()
                    if degraded:
                        mark_degraded()
                    return value
                claimed = False
                try:
                    claimed = await cache.claim_async(digest)
                    if not claimed:  # another process is computing it: wait for its answer
                        hit, value = await _await_other_process_async(cache, digest)
                        if hit:
                            future.set_result((value, False))
                            _probe.cached(label, True)
                            begin_call()
                            return value
                        claimed = True
                    _probe.cached(label, False)
                    begin_call()
                    value = await fn(*args, **kwargs)
                    degraded = result_degraded(value)
                    if store_values and not degraded:
                        await cache.set_async(digest, value)
                except Exception as error:
                    future.set_exception(error)
                    raise
                except BaseException:
                    future.set_exception(_LeaderGone())
                    raise
                else:
                    future.set_result((value, degraded))
                    return value
                finally:
                    in_flight.leave(digest)
                    if claimed:
                        await cache.unclaim_async(digest)

        return async_wrapper

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            digest = make_key(args, kwargs)
        except TypeError:
            if not bypass_unkeyable:
                raise
            begin_call()
            return fn(*args, **kwargs)
        while True:
            hit, value = cache.get(digest)
            if hit:
                _probe.cached(label, True)
                begin_call()
                return value
            leader, future = in_flight.join(digest)
            if not leader:
                try:
                    value, degraded = future.result()
                except _LeaderGone:
                    continue
                _probe.cached(label, True)
                begin_call()
                if degraded:
                    mark_degraded()
                return value
            claimed = False
            try:
                claimed = cache.claim(digest)
                if not claimed:  # another process is computing it: wait for its answer
                    hit, value = _await_other_process(cache, digest)
                    if hit:
                        future.set_result((value, False))
                        _probe.cached(label, True)
                        begin_call()
                        return value
                    claimed = True
                _probe.cached(label, False)
                begin_call()
                value = fn(*args, **kwargs)
                degraded = result_degraded(value)
                if store_values and not degraded:
                    cache.set(digest, value)
            except Exception as error:
                future.set_exception(error)
                raise
            except BaseException:
                future.set_exception(_LeaderGone())
                raise
            else:
                future.set_result((value, degraded))
                return value
            finally:
                in_flight.leave(digest)
                if claimed:
                    cache.unclaim(digest)

    return sync_wrapper
