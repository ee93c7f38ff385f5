"""Monitoring for glm_guard: events, the stats recorder, the numbers, alerts, and exporters.

Everything a guard reports is a typed event (:func:`subscribe` to see them); the built-in
recorder is a subscriber that counts them per key and per minute, in this process or, with
a backend that shares stats (Redis), for the whole fleet.  :func:`stats` and
:func:`rate_limit_stats` read those counters; alerts fire on the seed's thresholds.

``app`` is a plain ASGI application (no framework needed) serving::

    GET /api/v1/monitoring/stats                              glm_guard.stats()
    GET /api/v1/monitoring/rate-limit-stats?window_minutes=60 glm_guard.rate_limit_stats(60)
    GET /api/v1/monitoring/series?window_minutes=60           per-minute numbers, for the page's charts
    GET /                                                     the monitor page (charts; loads without the token)
    GET /metrics                                              Prometheus text (needs prometheus_client)
    GET /healthz                                              is the stats backend reachable

Mount it in FastAPI or Starlette (``app.mount("/", glm_guard.monitoring.app)``), run it with
any ASGI server, or serve it alone with ``glm-guard monitor --host 127.0.0.1 --port 8000``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from ._alerts import on_alert
from ._events import (
    Alert,
    AttemptEvent,
    CacheEvent,
    CallEvent,
    FallbackEvent,
    GuardEvent,
    LeaseLost,
    LimitChanged,
    RetryEvent,
    WaitEvent,
)
from ._events import subscribe as subscribe
from ._recorder import configure_stats
from ._views import rate_limit_stats, stats

if TYPE_CHECKING:
    from ._app import DEFAULT_PREFIX, Monitor, Response, create_app
    from ._logging import LoggingSubscriber
    from ._prometheus import PrometheusSubscriber

    app: Monitor


def _default_app() -> Monitor:
    from ._app import create_app

    return create_app()


# Exporters and the HTTP app are imported on first use: the guards need none of them.
_LAZY: dict[str, _lazy.Source] = {
    "app": _default_app,
    "DEFAULT_PREFIX": "._app",
    "Monitor": "._app",
    "Response": "._app",
    "create_app": "._app",
    "LoggingSubscriber": "._logging",
    "PrometheusSubscriber": "._prometheus",  # imports prometheus_client
}

__all__ = [
    "DEFAULT_PREFIX",
    "Alert",
    "AttemptEvent",
    "CacheEvent",
    "CallEvent",
    "FallbackEvent",
    "GuardEvent",
    "LeaseLost",
    "LimitChanged",
    "LoggingSubscriber",
    "Monitor",
    "PrometheusSubscriber",
    "Response",
    "RetryEvent",
    "WaitEvent",
    "app",
    "configure_stats",
    "create_app",
    "on_alert",
    "rate_limit_stats",
    "stats",
    "subscribe",
]


__getattr__ = _lazy.module_getattr(__name__, globals(), _LAZY)
