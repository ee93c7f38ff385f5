"""Backends: where limiters and caches keep their state.

``get_backend`` turns what a decorator was given (``None``, a name, a URL or an instance)
into a backend.  Equal specs share one instance per process, so every decorator naming
``"local"`` (or the same Redis URL) shares limits and connections.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from .. import _lazy
from .._config import REDIS_SCHEMES, check_redis_url, get_settings, mask_url
from .._errors import ConfigurationError
from ._base import AsyncPermit, Backend, CacheStore, Limiter, LimitPolicy, Permit, RetryBudget, RetryBudgetPolicy
from ._live import live_backends

if TYPE_CHECKING:
    from ._local import LocalBackend
    from ._redis import RedisBackend

__all__ = [
    "AsyncPermit",
    "Backend",
    "CacheStore",
    "LimitPolicy",
    "Limiter",
    "LocalBackend",
    "Permit",
    "RedisBackend",
    "RetryBudget",
    "RetryBudgetPolicy",
    "get_backend",
    "live_backends",
    "reset_backends",
]


# Imported on first use: the local one pulls in asyncio, the Redis one redis-py.
_LAZY: dict[str, _lazy.Source] = {"LocalBackend": "._local", "RedisBackend": "._redis"}


__getattr__ = _lazy.module_getattr(__name__, globals(), _LAZY)


_VALID = (
    f"'local', 'redis' (uses REDIS_URL), a {', '.join(f'{scheme}://' for scheme in REDIS_SCHEMES)} URL, "
    "or a Backend instance"
)

_lock = threading.Lock()
_shared: dict[str, Backend] = {}
_owner_pid = os.getpid()


def get_backend(spec: str | Backend | None = None, *, parameter: str = "backend") -> Backend:
    """Resolve ``spec`` to a backend; ``None`` means the environment's ``GLM_GUARD_BACKEND``.

    Unknown names fail here, at decoration time, with a message naming ``parameter`` (or the
    environment variable) and listing what is accepted.
    """
    if isinstance(spec, Backend):
        return spec
    source = parameter
    if spec is None:
        spec = get_settings().backend
        source = "GLM_GUARD_BACKEND"
    if not isinstance(spec, str):
        raise ConfigurationError(parameter, f"must be {_VALID}; got {type(spec).__name__}")
    name = spec.strip()
    if name.lower() == "redis":
        url = get_settings().redis_url
        if url is None:
            raise ConfigurationError("REDIS_URL", f"must be set when {source} is 'redis'")
        name = url
    elif name.lower() == "local":
        name = "local"
    elif name.split("://", 1)[0].lower() in REDIS_SCHEMES and "://" in name:
        check_redis_url(name, source)
    else:
        raise ConfigurationError(source, f"unknown backend {mask_url(spec)!r}; valid: {_VALID}")
    return _shared_backend(name)


def _shared_backend(name: str) -> Backend:
    global _owner_pid
    with _lock:
        if os.getpid() != _owner_pid:  # a forked child must not reuse the parent's sockets
            _shared.clear()
            _owner_pid = os.getpid()
        backend = _shared.get(name)
        if backend is None:
            backend = _shared[name] = _create(name)
        return backend


def _create(name: str) -> Backend:
    if name == "local":
        return _local_backend()
    from ._redis import RedisBackend

    settings = get_settings()
    return RedisBackend(name, key_prefix=settings.key_prefix, socket_timeout=settings.redis_timeout)


def _local_backend() -> LocalBackend:
    from ._local import LocalBackend

    return LocalBackend()


def reset_backends() -> None:
    """Close and forget the shared backends (tests; or before reconfiguring a process)."""
    with _lock:
        backends = list(_shared.values())
        _shared.clear()
    for backend in backends:
        backend.close()
