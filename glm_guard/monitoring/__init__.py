"""Monitoring for glm_guard: HTTP endpoints, Prometheus, and event subscribers.

``app`` is a plain ASGI application (no framework needed) serving::

    GET /api/v1/monitoring/stats                              glm_guard.stats()
    GET /api/v1/monitoring/rate-limit-stats?window_minutes=60 glm_guard.rate_limit_stats(60)
    GET /metrics                                              Prometheus text (needs prometheus_client)
    GET /healthz                                              is the stats backend reachable

Mount it in FastAPI or Starlette (``app.mount("/", glm_guard.monitoring.app)``), run it with
any ASGI server, or serve it alone with ``glm-guard monitor --host 127.0.0.1 --port 8000``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._app import DEFAULT_PREFIX, Monitor, Response, create_app
from ._logging import LoggingSubscriber

if TYPE_CHECKING:
    from ._prometheus import PrometheusSubscriber

__all__ = [
    "DEFAULT_PREFIX",
    "LoggingSubscriber",
    "Monitor",
    "PrometheusSubscriber",
    "Response",
    "app",
    "create_app",
]

app = create_app()


def __getattr__(name: str) -> object:
    if name == "PrometheusSubscriber":  # imports prometheus_client, so only on first use
        from ._prometheus import PrometheusSubscriber

        return PrometheusSubscriber
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
