"""Where a command that makes no calls of its own reads the numbers of the processes that do.

``glm-guard monitor``, ``glm-guard stats`` and the demo's monitor block all run in a process
that did not make the guarded calls, so they read the counters the workers share in Redis.
The URL comes only from the environment (or the demo's own ``REDIS_URL`` check), never from
the command line, where ``ps`` would show its password.
"""

from __future__ import annotations

from .._config import get_settings
from ..backends._base import SharedStats, SharesStats

__all__ = ["redis_source", "shared_source"]


def redis_source(spec: str) -> SharedStats:
    """The stats counters kept in the Redis that ``spec`` (a URL or ``"redis"``) names."""
    from ..backends import get_backend

    backend = get_backend(spec, parameter="REDIS_URL")
    assert isinstance(backend, SharesStats)  # get_backend gives only local and Redis backends
    return backend.shared_stats()


def shared_source() -> SharedStats | None:
    """The Redis the workers share their stats through, found the way they find it; ``None`` if none.

    That is ``GLM_GUARD_BACKEND`` when it names Redis, else ``REDIS_URL``.
    """
    settings = get_settings()
    spec = settings.backend if settings.backend.lower() != "local" else settings.redis_url
    return None if spec is None else redis_source(spec)
