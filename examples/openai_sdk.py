"""The openai SDK pointed at GLM, guarded by the decorators.

The client is built with ``max_retries=0``: openai retries a 429 twice on its own, and under
``@retry_on_1302`` those hidden retries would multiply every attempt (and retry 1113 too).
Runs against a local GLM simulator that allows two calls in flight, unless
``GLM_API_BASE_URL`` is set (then ``GLM_API_KEY`` and ``GLM_API_MODEL`` are used)::

    python examples/openai_sdk.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import openai

from glm_guard import fallback, rate_limited, retry_on_1302
from glm_guard.testing import GLMSimulator, run_simulator

MODEL = os.environ.get("GLM_API_MODEL", "glm-4")
CONCURRENCY = 2  # GLM limits calls in flight per account and model
BUSY = "抱歉,系统繁忙,请稍后重试。"


class Assistant:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    @fallback(BUSY)
    @retry_on_1302(max_tries=5, base_delay=0.2, max_delay=2.0)
    @rate_limited(calls=50, period=60, concurrency=CONCURRENCY, key=f"glm:{MODEL}")
    async def ask(self, question: str) -> str:
        reply = await self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], temperature=0.7
        )
        return reply.choices[0].message.content or ""


@contextlib.contextmanager
def glm_endpoint() -> Iterator[tuple[str, str, GLMSimulator | None]]:
    """The real API if ``GLM_API_BASE_URL`` is set, else a simulator started for the example."""
    base_url = os.environ.get("GLM_API_BASE_URL")
    if base_url:
        yield base_url, os.environ["GLM_API_KEY"], None
        return
    with run_simulator(concurrency=CONCURRENCY, latency=0.1) as sim:
        yield sim.base_url, "example-key", sim


async def main() -> int:
    questions = [f"问题 {i}: 1302 是什么错误?" for i in range(12)]
    with glm_endpoint() as (base_url, api_key, sim):
        async with openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=30) as client:
            raw = await asyncio.gather(
                *(
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}])
                    for q in questions
                ),
                return_exceptions=True,
            )
            limited = sum(1 for r in raw if isinstance(r, openai.RateLimitError))
            print(f"unguarded: {len(raw)} calls, {limited} failed with openai.RateLimitError (1302)")

            if sim is not None:
                sim.reset_stats()
            answers = await asyncio.gather(*(Assistant(client).ask(q) for q in questions))
            busy = sum(1 for a in answers if a == BUSY)
            print(f"guarded: {len(answers)} calls, 0 failed, {busy} fallbacks")
            if sim is not None:
                stats = sim.stats
                print(f"simulator: {stats.rejected.get('1302', 0)} 1302s, peak in flight {stats.peak_in_flight}")
            print(f"first answer: {answers[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
