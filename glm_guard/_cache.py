"""``@cached_response``: the same arguments within ``ttl`` run the body once.

Never stored: exceptions, and answers a ``fallback`` produced anywhere inside the body (in
whatever order the decorators are stacked, and in child tasks or threads).  ``None`` is a
value like any other.  Concurrent identical calls are coalesced: in one process one runs
the body and the others wait for its outcome; on a shared store one process computes an
entry while the others wait for it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from . import _validate
from ._cache_keys import KeyMaker
from ._call_context import CACHE_SCOPE, mark_degraded, open_scope
from ._coalesce import InFlight, LeaderGone, Pending
from ._config import get_settings
from ._errors import ConfigurationError
from ._stack import Stack, entry, join
from ._wrapping import default_key, kind_of, unwrap_descriptor
from .backends import CacheStore, get_backend
from .backends._base import Backend

__all__ = ["cached_response"]

P = ParamSpec("P")
R = TypeVar("R")

#: How often a caller waiting for another process's entry looks again.
_POLL_SECONDS = 0.05


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
    """Cache results by argument value for ``ttl`` seconds.

    ``ttl=None``: until evicted from the local cache; on Redis, where nothing evicts by
    count, for ``DEFAULT_MAX_TTL`` (24 h).  ``maxsize`` bounds the cache in this process
    (LRU).  ``key`` is either a namespace string (default: the function's
    ``module.qualname``; functions sharing a namespace on a shared backend share entries) or
    a callable taking the function's arguments and returning the material of the key.
    ``self``/``cls`` are left out of the key.

    On a shared backend values are stored as JSON (``serializer="json"``, the default:
    results JSON cannot give back unchanged are returned but not cached).  ``"pickle"``
    stores any picklable value and needs ``GLM_GUARD_CACHE_SECRET``.  With the secret set,
    every shared entry is signed together with its key and deadline, and any other entry is
    a miss (never unpickled); without it, whoever can write to the Redis can plant answers.

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
        inner, stack = join(fn, backend=store, backend_from_environment=backend is None)
        policy = _CachePolicy(cache, make_key, lifetime != 0, unkeyable == "bypass", stack)
        wrapper = _wrap_async(inner, policy) if kind_of(fn) == "async" else _wrap_sync(inner, policy)
        return cast(Callable[P, R], rewrap(entry(wrapper, stack)))

    return decorate


class _CachePolicy:
    """One decorator's frozen choices, and the calls running now under it."""

    __slots__ = ("bypass_unkeyable", "cache", "in_flight", "make_key", "stack", "store_values")

    def __init__(
        self,
        cache: CacheStore,
        make_key: Callable[[tuple[Any, ...], dict[str, Any]], Any],
        store_values: bool,
        bypass_unkeyable: bool,
        stack: Stack,
    ) -> None:
        self.cache = cache
        self.make_key = make_key
        self.store_values = store_values
        self.bypass_unkeyable = bypass_unkeyable
        self.stack = stack
        self.in_flight = InFlight()

    def key_or_none(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's key; ``None`` when an argument cannot be keyed and such calls bypass."""
        try:
            return self.make_key(args, kwargs)
        except TypeError:
            if not self.bypass_unkeyable:
                raise
            return None

    def answered(self, value: object, degraded: bool = False) -> object:
        """A call answered without running the body here (a hit, or another caller's run)."""
        self.stack.cache_answered(True)
        if degraded:
            mark_degraded()
        return value


def _wrap_async(fn: Callable[..., Any], policy: _CachePolicy) -> Callable[..., Any]:
    import asyncio

    cache, in_flight, stack = policy.cache, policy.in_flight, policy.stack

    async def run_body(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[object, bool]:
        stack.cache_answered(False)
        scope, token = open_scope()
        try:
            value = await fn(*args, **kwargs)
        finally:
            CACHE_SCOPE.reset(token)
        if policy.store_values and not scope.degraded:
            if cache.shared:
                await cache.set_async(key, value)
            else:  # a store in this process answers at once
                cache.set(key, value)
        return value, scope.degraded

    async def lead(key: Any, pending: Pending, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        claimed = False
        try:
            # The waiters are settled before the claim goes back: they must never depend on that
            # round trip succeeding (or on this task not being cancelled during it).
            with in_flight.leading(key, pending) as leader:
                if cache.shared:
                    claimed = await cache.claim_async(key)
                    # Claimed: the holder may have stored its answer and let go since we looked.
                    # Not: another process is computing it, so wait for its answer (or its claim).
                    hit, value = await (cache.get_async(key) if claimed else _await_other_process_async(cache, key))
                    claimed = claimed or not hit
                    if hit:
                        return leader.answered(policy.answered(value), False)
                return leader.answered(*await run_body(key, args, kwargs))
        finally:
            if claimed:
                await cache.unclaim_async(key)

    @functools.wraps(fn)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = policy.key_or_none(args, kwargs)
        if key is None:
            return await fn(*args, **kwargs)
        while True:
            # A store in this process answers at once: only a shared one is awaited.
            hit, value = await cache.get_async(key) if cache.shared else cache.get(key)
            if hit:
                return policy.answered(value)
            pending = in_flight.lead(key)
            if pending is not None:
                return await lead(key, pending, args, kwargs)
            loop = asyncio.get_running_loop()  # an identical call is running: wait for its outcome
            woken = loop.create_future()
            pending = in_flight.follow(key, (loop, woken))
            if pending is None:
                continue  # it just ended: look again
            await woken
            try:
                value, degraded = pending.result()
            except LeaderGone:
                continue  # cancelled: one of its followers takes over
            return policy.answered(value, degraded)

    return async_wrapper


def _wrap_sync(fn: Callable[..., Any], policy: _CachePolicy) -> Callable[..., Any]:
    cache, in_flight, stack = policy.cache, policy.in_flight, policy.stack

    def run_body(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[object, bool]:
        stack.cache_answered(False)
        scope, token = open_scope()
        try:
            value = fn(*args, **kwargs)
        finally:
            CACHE_SCOPE.reset(token)
        if policy.store_values and not scope.degraded:
            cache.set(key, value)
        return value, scope.degraded

    def lead(key: Any, pending: Pending, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        claimed = False
        try:
            with in_flight.leading(key, pending) as leader:  # settled before the claim goes back
                if cache.shared:
                    claimed = cache.claim(key)
                    hit, value = cache.get(key) if claimed else _await_other_process(cache, key)
                    claimed = claimed or not hit
                    if hit:
                        return leader.answered(policy.answered(value), False)
                return leader.answered(*run_body(key, args, kwargs))
        finally:
            if claimed:
                cache.unclaim(key)

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = policy.key_or_none(args, kwargs)
        if key is None:
            return fn(*args, **kwargs)
        while True:
            hit, value = cache.get(key)
            if hit:
                return policy.answered(value)
            pending = in_flight.lead(key)
            if pending is not None:
                return lead(key, pending, args, kwargs)
            woken = threading.Event()  # an identical call is running: wait for its outcome
            pending = in_flight.follow(key, woken)
            if pending is None:
                continue
            woken.wait()
            try:
                value, degraded = pending.result()
            except LeaderGone:
                continue
            return policy.answered(value, degraded)

    return sync_wrapper


def _await_other_process(cache: CacheStore, key: Any) -> tuple[bool, object]:
    """Wait for the process holding the claim; ``(False, None)`` means: compute it yourself.

    Ends when the entry appears, or when the claim is free again (the other process failed,
    or died and its claim expired), in which case this caller now holds the claim.
    """
    while True:
        time.sleep(_POLL_SECONDS)
        hit, value = cache.get(key)
        if hit:
            return True, value
        if cache.claim(key):
            return False, None


async def _await_other_process_async(cache: CacheStore, key: Any) -> tuple[bool, object]:
    import asyncio

    while True:
        await asyncio.sleep(_POLL_SECONDS)
        hit, value = await cache.get_async(key)
        if hit:
            return True, value
        if await cache.claim_async(key):
            return False, None
