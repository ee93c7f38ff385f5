"""A pydantic-ai agent on GLM (``ZaiProvider``), guarded at the transport.

The provider takes an ``httpx.AsyncClient``: give it ``glm_guard.http.async_client(...)``.
Runs against a local GLM simulator that allows two calls in flight::

    python examples/http_pydantic_ai.py
"""

from __future__ import annotations

import asyncio
import json

import httpx
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.zai import ZaiProvider

import glm_guard.http
from glm_guard.testing import run_simulator


class WithObjectField(httpx.AsyncBaseTransport):
    """For the simulator only: pydantic-ai insists on an ``object`` field that GLM's documented
    schema (and so the simulator) leaves out.  Below the guard, so the guard sees the answer as sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code >= 400:
            return response
        body = json.loads(await response.aread())
        return httpx.Response(200, json={"object": "chat.completion", **body})


with run_simulator(concurrency=2, latency=0.05) as sim:
    http = glm_guard.http.async_client(concurrency=2, transport=WithObjectField())
    provider = ZaiProvider(api_key="example-key", base_url=sim.base_url, http_client=http)
    agent = Agent(OpenAIChatModel("glm-4", provider=provider))

    async def ask_all() -> list[str]:
        runs = await asyncio.gather(*(agent.run(f"问题 {i}") for i in range(12)))
        return [run.output for run in runs]

    answers = asyncio.run(ask_all())
    print(f"pydantic-ai: {len(answers)} calls, 0 failed")
    print(f"simulator: {sim.stats.rejected.get('1302', 0)} 1302s, peak in flight {sim.stats.peak_in_flight}")
