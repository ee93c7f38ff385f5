"""langchain-openai's ``ChatOpenAI`` pointed at GLM, guarded at the transport.

``ChatOpenAI`` takes one httpx client for its sync calls and one for its async calls; give it
both.  Runs against a local GLM simulator that allows two calls in flight::

    python examples/http_langchain.py
"""

from __future__ import annotations

import asyncio

from langchain_openai import ChatOpenAI

import glm_guard.http
from glm_guard.testing import run_simulator

with run_simulator(concurrency=2, latency=0.05) as sim:
    chat = ChatOpenAI(
        model="glm-4",
        api_key="example-key",  # type: ignore[arg-type]
        base_url=sim.base_url,
        http_client=glm_guard.http.client(concurrency=2),
        http_async_client=glm_guard.http.async_client(concurrency=2),
    )

    async def ask_all() -> list[str]:
        replies = await chat.abatch([f"问题 {i}" for i in range(12)])
        return [str(reply.content) for reply in replies]

    answers = asyncio.run(ask_all())
    streamed = "".join(str(chunk.content) for chunk in chat.stream("流式回答"))
    print(f"langchain: {len(answers) + 1} calls, 0 failed")
    print(f"simulator: {sim.stats.rejected.get('1302', 0)} 1302s, peak in flight {sim.stats.peak_in_flight}")
