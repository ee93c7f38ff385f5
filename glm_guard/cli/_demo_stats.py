"""Where the demo's guarded calls are counted, and how the monitor block reads them back.

With ``--backend redis`` the guarded calls run in worker processes (or in this one), and their
numbers end up where ``glm-guard stats`` and the monitoring endpoints look: the Redis the
client is handed shares its stats too.  A spawned worker leaves through ``sys.exit``, so the
recorder's exit flush sends its last second before ``Pool.join`` returns.
"""

from __future__ import annotations

from typing import Any

from .. import stats
from ..monitoring import _views as recorded
from ..monitoring._recorder import RECORDER

__all__ = ["figures"]


def figures(backend: str, processes: int) -> tuple[str, dict[str, Any] | None]:
    """``(where the numbers come from, glm_guard.stats()'s totals)``; ``None`` when nobody holds them all."""
    if backend == "local":
        if processes > 1:
            return "each worker process keeps its own numbers with the local backend", None
        return "this process", dict(stats()["total"])
    from ._fleet import redis_source

    name, per_key, error = recorded.read_totals(RECORDER, redis_source(backend))
    totals = recorded.render_totals(name, per_key, error, RECORDER.clock())["total"]
    if error is not None:
        return f"this process only: Redis could not be read ({error})", dict(totals)
    return "every process sharing this Redis, since first use", dict(totals)
