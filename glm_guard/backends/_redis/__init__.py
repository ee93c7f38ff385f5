"""The Redis backend, one idea per module.

``_connections`` (clients per process and per event loop, errors wrapped once), ``_scripts``
(the Lua files, run by SHA), ``_health`` (outages), ``_workers`` (heartbeat, lease renewal,
release listener), ``_limiter`` (admission decisions) with ``_steps`` (what they ask their
sync or async driver to do), ``_cache``, ``_shared_stats``, ``_tokens`` and ``_backend``,
which ties them together.
"""

from __future__ import annotations

try:
    import redis  # noqa: F401 - only to fail early, naming the extra to install
except ImportError:  # pragma: no cover - exercised only without the extra
    from ..._errors import ConfigurationError

    raise ConfigurationError("backend", "the redis backend needs redis-py: pip install 'glm-guard[redis]'") from None

from ._backend import RedisBackend
from ._cache import RedisCacheStore
from ._limiter import RedisLimiter
from ._shared_stats import RedisSharedStats

__all__ = ["RedisBackend", "RedisCacheStore", "RedisLimiter", "RedisSharedStats"]
