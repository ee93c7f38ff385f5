"""The seed's reasoning modules, using ``get_llm_client()`` exactly as its guide wrote them.

``get_llm_client()`` is configured from the environment (``GLM_API_KEY``, ``GLM_API_BASE_URL``,
``GLM_API_MAX_CONCURRENCY``, ``GLM_API_MAX_CALLS_PER_MINUTE``, ``GLM_GUARD_BACKEND``) and raises
``GLMRateLimitException`` only when its guard gives up, so the seed's ``except`` branch with
its degraded answer works unchanged.  Without ``GLM_API_BASE_URL`` the example starts a local
GLM simulator and points the environment at it::

    python examples/llm_client.py
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import glm_guard
from glm_guard import GLMRateLimitException, get_llm_client
from glm_guard.testing import GLMSimulator, run_simulator

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ReasoningResult:
    answer: str
    confidence: float


class ChainOfThoughtReasoner:
    def _build_messages(self, question: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": question}]

    async def reason(self, question: str, context: Any = None, **kwargs: Any) -> ReasoningResult:
        # 使用带速率限制的客户端
        client = get_llm_client()
        try:
            response = await client.call_api(
                messages=self._build_messages(question),
                temperature=0.7,
                max_tokens=2000,
            )
        except GLMRateLimitException as e:
            logger.error(f"Rate limit hit: {e}")
            # 返回降级响应
            return ReasoningResult(answer="抱歉,系统繁忙,请稍后重试。", confidence=0.0)
        return ReasoningResult(answer=response["choices"][0]["message"]["content"], confidence=0.9)


@contextlib.contextmanager
def glm_environment() -> Iterator[GLMSimulator | None]:
    """Use the environment as given if it names an API, else point it at a simulator."""
    if os.environ.get("GLM_API_BASE_URL"):
        yield None
        return
    with run_simulator(concurrency=2, latency=0.1) as sim:
        os.environ.update(GLM_API_BASE_URL=sim.base_url, GLM_API_KEY="example-key", GLM_API_MAX_CONCURRENCY="2")
        glm_guard.reload_settings()  # get_llm_client() reads the settings when first called
        yield sim


async def main() -> int:
    with glm_environment() as sim:
        reasoner = ChainOfThoughtReasoner()
        questions = [f"问题 {i}: 为什么会出现 1302?" for i in range(12)]
        results = await asyncio.gather(*(reasoner.reason(q) for q in questions))
        degraded = sum(1 for r in results if r.confidence == 0.0)
        print(f"reasoner: {len(results)} questions, 0 failed, {degraded} degraded answers")

        chunks = await get_llm_client().call_api(messages=[{"role": "user", "content": "流式回答"}], stream=True)
        text = "".join([chunk["choices"][0]["delta"].get("content") or "" async for chunk in chunks])
        print(f"stream: {text}")
        if sim is not None:
            stats = sim.stats
            print(f"simulator: {stats.rejected.get('1302', 0)} 1302s, peak in flight {stats.peak_in_flight}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
