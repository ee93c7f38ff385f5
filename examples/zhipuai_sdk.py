"""The zhipuai SDK (sync, from threads), guarded by the decorators.

zhipuai retries a 429 three times by default, ignoring Retry-After and the business code;
``max_retries=0`` leaves the retrying to ``@retry_on_1302``, which retries 1302 and never
1113.  A 1302 from zhipuai is ``APIReachLimitError`` with the code only in the response
body; glm_guard reads it from there.  Runs against a local GLM simulator that allows two
calls in flight, unless ``GLM_API_BASE_URL`` is set (then ``GLM_API_KEY`` is used)::

    python examples/zhipuai_sdk.py
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import zhipuai

from glm_guard import fallback, rate_limited, retry_on_1302
from glm_guard.testing import GLMSimulator, run_simulator

MODEL = os.environ.get("GLM_API_MODEL", "glm-4")
CONCURRENCY = 2
BUSY = "抱歉,系统繁忙,请稍后重试。"


class Assistant:
    def __init__(self, client: zhipuai.ZhipuAI) -> None:
        self.client = client

    @fallback(BUSY)
    @retry_on_1302(max_tries=5, base_delay=0.2, max_delay=2.0)
    @rate_limited(calls=50, period=60, concurrency=CONCURRENCY, key=f"glm:{MODEL}")
    def ask(self, question: str) -> str:
        reply = self.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}])
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


def main() -> int:
    questions = [f"问题 {i}: 如何避免 1302?" for i in range(12)]
    with glm_endpoint() as (base_url, api_key, sim):
        client = zhipuai.ZhipuAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=30)
        try:

            def unguarded(question: str) -> object:
                return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}])

            with ThreadPoolExecutor(len(questions)) as pool:
                futures = [pool.submit(unguarded, q) for q in questions]
            limited = sum(1 for f in futures if isinstance(f.exception(), zhipuai.APIReachLimitError))
            print(f"unguarded: {len(futures)} calls, {limited} failed with zhipuai.APIReachLimitError (1302)")

            if sim is not None:
                sim.reset_stats()
            assistant = Assistant(client)
            with ThreadPoolExecutor(len(questions)) as pool:
                answers = list(pool.map(assistant.ask, questions))
            busy = sum(1 for a in answers if a == BUSY)
            print(f"guarded: {len(answers)} calls, 0 failed, {busy} fallbacks")
            if sim is not None:
                stats = sim.stats
                print(f"simulator: {stats.rejected.get('1302', 0)} 1302s, peak in flight {stats.peak_in_flight}")
            print(f"first answer: {answers[0]}")
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
