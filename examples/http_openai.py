"""The openai SDK pointed at GLM, guarded at the transport: sync and async, each one line.

openai's retry settings stay at their defaults: each of its retries passes the guard too, and
when the guard gives up or the error is permanent the answer says ``x-should-retry: false``,
which openai obeys.  Runs against a local GLM simulator that allows two calls in flight::

    python examples/http_openai.py
"""

from __future__ import annotations

import asyncio

import openai

import glm_guard.http
from glm_guard.testing import run_simulator


async def ask_all(client: openai.AsyncOpenAI, questions: list[str]) -> list[str]:
    async def ask(question: str) -> str:
        reply = await client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": question}])
        return reply.choices[0].message.content or ""

    return await asyncio.gather(*(ask(q) for q in questions))


with run_simulator(concurrency=2, latency=0.05) as sim:
    sync_client = openai.OpenAI(
        api_key="example-key", base_url=sim.base_url, http_client=glm_guard.http.client(concurrency=2)
    )
    async_client = openai.AsyncOpenAI(
        api_key="example-key", base_url=sim.base_url, http_client=glm_guard.http.async_client(concurrency=2)
    )
    first = sync_client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": "你好"}])
    answers = asyncio.run(ask_all(async_client, [f"问题 {i}" for i in range(12)]))
    print(f"openai: {len(answers) + 1} calls, 0 failed")
    print(f"simulator: {sim.stats.rejected.get('1302', 0)} 1302s, peak in flight {sim.stats.peak_in_flight}")
