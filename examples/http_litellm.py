"""litellm's ``zai/`` provider pointed at GLM, guarded at the transport.

litellm sends its ``zai/`` requests through its process-wide client sessions: set both once.
Runs against a local GLM simulator that allows two calls in flight::

    python examples/http_litellm.py
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm would fetch its price list

import litellm

import glm_guard.http
from glm_guard.testing import run_simulator

with run_simulator(concurrency=2, latency=0.05) as sim:
    litellm.client_session = glm_guard.http.client(concurrency=2)
    litellm.aclient_session = glm_guard.http.async_client(concurrency=2)

    async def ask(question: str) -> str:
        reply = await litellm.acompletion(
            model="zai/glm-4",
            messages=[{"role": "user", "content": question}],
            api_key="example-key",
            api_base=sim.base_url,
        )
        return str(reply.choices[0].message.content)

    async def ask_all() -> list[str]:
        return await asyncio.gather(*(ask(f"问题 {i}") for i in range(12)))

    answers = asyncio.run(ask_all())
    print(f"litellm: {len(answers)} calls, 0 failed")
    print(f"simulator: {sim.stats.rejected.get('1302', 0)} 1302s, peak in flight {sim.stats.peak_in_flight}")
