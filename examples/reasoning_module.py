"""The seed's ChainOfThoughtReasoner, guarded by decorators instead of a wrapper client.

Runs with no network and no Redis: ``call_glm_api`` below stands in for the real API and
answers 1302 now and then, the way GLM does when too many calls are in flight.

    python examples/reasoning_module.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time

from glm_guard import cached_response, fallback, rate_limited, retry_on_1302

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ReasoningResult:
    answer: str
    confidence: float


class GLMError(Exception):
    """What a home-made client raises: the provider's status and body as text."""


_in_flight = 0
_ACCOUNT_CONCURRENCY = 2  # GLM limits calls in flight per account and model


async def call_glm_api(messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
    """A stand-in for GLM: more than two calls in flight get 429 / 1302."""
    global _in_flight
    if _in_flight >= _ACCOUNT_CONCURRENCY:
        raise GLMError('429 {"error":{"code":"1302","message":"您的账户已达到速率限制,请您控制请求频率"}}')
    _in_flight += 1
    try:
        await asyncio.sleep(random.uniform(0.01, 0.03))
        return f"思考过程…… 结论:{messages[-1]['content']}"
    finally:
        _in_flight -= 1


BUSY = ReasoningResult(answer="抱歉,系统繁忙,请稍后重试。", confidence=0.0)


class ChainOfThoughtReasoner:
    def _build_messages(self, question: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": question}]

    # Outermost first: a cache hit costs no permit; a fallback answer is never cached;
    # every retry attempt takes a permit of its own.
    @cached_response(ttl=600)
    @fallback(BUSY)
    @retry_on_1302(max_tries=5, base_delay=0.05, max_delay=0.5)
    @rate_limited(calls=50, period=60, concurrency=_ACCOUNT_CONCURRENCY, key="glm-4")
    async def reason(self, question: str, context: str | None = None) -> ReasoningResult:
        answer = await call_glm_api(self._build_messages(question), temperature=0.7, max_tokens=2000)
        return ReasoningResult(answer=answer, confidence=0.9)


async def unguarded(question: str) -> str:
    """The same call with no guard: what the seed's services do today."""
    return await call_glm_api([{"role": "user", "content": question}], temperature=0.7, max_tokens=2000)


async def main() -> list[ReasoningResult]:
    questions = [f"问题 {i % 6}" for i in range(24)]  # repeats are served from the cache
    raw = await asyncio.gather(*(unguarded(q) for q in questions), return_exceptions=True)
    errors = sum(1 for r in raw if isinstance(r, GLMError))
    print(f"unguarded: {len(raw)} calls, {errors} failed with 1302")

    reasoner = ChainOfThoughtReasoner()
    began = time.monotonic()
    results = await asyncio.gather(*(reasoner.reason(q) for q in questions))
    busy = sum(1 for r in results if r is BUSY)
    print(
        f"guarded:   {len(results)} questions answered in {time.monotonic() - began:.2f}s, 0 errors, {busy} fallbacks"
    )
    for question, result in list(zip(questions, results, strict=True))[:6]:
        print(f"  {question}: {result.answer} (confidence {result.confidence})")
    return results


if __name__ == "__main__":
    asyncio.run(main())
