"""Where the demo's guarded calls are counted, and how the monitor block reads them back.

With ``--backend redis`` the guarded calls run in worker processes (or in this one), and the
numbers must end up where ``glm-guard stats`` and the monitoring endpoints look: the Redis the
guard shares its limit through.  The client is handed that Redis explicitly, and an explicit
backend does not make a process share its stats (only ``GLM_GUARD_BACKEND`` does), so every
process that runs guarded calls says so itself.  A spawned worker leaves through ``sys.exit``,
so the recorder's exit flush sends its last second before ``Pool.join`` returns.
"""

from __future__ import annotations

from typing import Any

from .. import _stats as recorded
from .. import configure_stats, stats

__all__ = ["figures", "share"]


def share(backend: str) -> None:
    """In a process about to make guarded calls: count them in ``backend`` when it is Redis."""
    if backend != "local":
        configure_stats(backend=backend)


def figures(backend: str, processes: int) -> tuple[str, dict[str, Any] | None]:
    """``(where the numbers come from, glm_guard.stats()'s totals)``; ``None`` when nobody holds them all."""
    if backend == "local":
        if processes > 1:
            return "each worker process keeps its own numbers with the local backend", None
        return "this process", dict(stats()["total"])
    from ._fleet import redis_source

    name, per_key, error = recorded.read_totals(recorded.RECORDER, redis_source(backend))
    totals = recorded.render_totals(name, per_key, error, recorded.RECORDER.clock())["total"]
    if error is not None:
        return f"this process only: Redis could not be read ({error})", dict(totals)
    return "every process sharing this Redis, since first use", dict(totals)
