"""Test helpers for code that calls Zhipu GLM: a local GLM API simulator.

:class:`GLMSimulator` serves ``POST /api/paas/v4/chat/completions`` on 127.0.0.1 with
GLM's error codes, per-(key, model) concurrency limit, SSE streaming and fault injection,
so the ``openai`` and ``zhipuai`` SDKs can be tested against it unchanged. Stdlib only.

Quick start::

    from glm_guard.testing import run_simulator

    with run_simulator(concurrency=1, latency=0.1) as sim:
        client = openai.OpenAI(api_key="test-key", base_url=sim.base_url, max_retries=0)
        sim.force_next("1302", 2)   # next two calls get 429/1302, then succeed
        ...
        assert sim.stats.peak_in_flight <= 1

For pytest, enable the ``glm_simulator`` fixture with ``-p glm_guard.testing.pytest_plugin``.
:class:`RedisServer` starts a throw-away ``redis-server`` on loopback for tests that need a real one.
"""

from ._answer import default_responder
from ._catalogue import GLM_ERRORS
from ._config import (
    Latency,
    Responder,
    SimulatorConfig,
    SimulatorOptions,
    StreamFailReason,
    mask_key,
)
from ._latency import LogNormalLatency
from ._provider import ProviderSimulator, run_provider_simulator
from ._records import RequestRecord, SimulatorStats, count_codes, in_flight_at
from ._redis_server import RedisServer
from ._simulator import GLMSimulator, run_simulator
from ._timeline import CapacityTimeline

__all__ = [
    "GLM_ERRORS",
    "CapacityTimeline",
    "GLMSimulator",
    "Latency",
    "LogNormalLatency",
    "ProviderSimulator",
    "RedisServer",
    "RequestRecord",
    "Responder",
    "SimulatorConfig",
    "SimulatorOptions",
    "SimulatorStats",
    "StreamFailReason",
    "count_codes",
    "default_responder",
    "in_flight_at",
    "mask_key",
    "run_provider_simulator",
    "run_simulator",
]
