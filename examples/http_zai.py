"""The seed's reasoning module on zai-sdk (``from zai import ZhipuAiClient``), Zhipu's current SDK.

One line guards it: the client's ``http_client`` is ``glm_guard.http.client(...)``, so every
request, zai's own retries included, passes the same admission, cooldown and 1302 retries.
zai's retry settings stay at their defaults.  ``@fallback`` on the method gives the seed's busy
answer when the guard gives up (the transport cannot see your function, the decorator can).
Runs against a local GLM simulator that allows two calls in flight::

    python examples/http_zai.py
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from zai import ZhipuAiClient

import glm_guard.http
from glm_guard import fallback
from glm_guard.testing import run_simulator


@dataclasses.dataclass
class ReasoningResult:
    answer: str
    confidence: float


BUSY = ReasoningResult(answer="抱歉,系统繁忙,请稍后重试。", confidence=0.0)


class ChainOfThoughtReasoner:
    def __init__(self, client: ZhipuAiClient) -> None:
        self.client = client

    @fallback(BUSY)
    def reason(self, question: str) -> ReasoningResult:
        messages = [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": question}]
        reply = self.client.chat.completions.create(model="glm-4", messages=messages, temperature=0.7)
        return ReasoningResult(answer=reply.choices[0].message.content, confidence=0.9)


with run_simulator(concurrency=2, latency=0.05) as sim:
    client = ZhipuAiClient(
        api_key="example-key",
        base_url=sim.base_url,
        http_client=glm_guard.http.client(concurrency=2),  # the one line: GLM allows 2 in flight here
    )
    reasoner = ChainOfThoughtReasoner(client)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(reasoner.reason, [f"问题 {i}" for i in range(12)]))
    busy = sum(1 for r in results if r is BUSY)
    print(f"zai-sdk: {len(results)} calls, 0 failed, {busy} fallbacks")
    print(f"simulator: {sim.stats.rejected.get('1302', 0)} 1302s, peak in flight {sim.stats.peak_in_flight}")
