"""Real traffic for the monitoring tests: calls through the decorators to the GLM simulator."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from glm_guard import AutoConcurrency, cached_response, fallback, rate_limited, retry_on_1302
from glm_guard.backends._local import LocalBackend
from glm_guard.testing import run_simulator

API_KEY = "sk-page-secret-0000"
PROMPT = "机密提示词"


def real_traffic(backend: LocalBackend) -> None:
    """Answers, retried 1302s, a fallback, cache hits, and a limit learned from the simulator's 1302s."""
    with (
        run_simulator(concurrency=2, latency=0.05, stream_chunk_delay=0) as sim,
        openai.OpenAI(api_key=API_KEY, base_url=sim.base_url, max_retries=0, timeout=10) as client,
    ):

        def create(prompt: str, model: str) -> str:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
            return reply.choices[0].message.content or ""

        @cached_response(ttl=60, backend=backend, key="page-test")
        @fallback("try again later")
        @retry_on_1302(max_tries=2, base_delay=0)
        @rate_limited(concurrency=2, key="glm-4", backend=backend, cooldown=0.1)
        def ask(prompt: str) -> str:
            return create(prompt, "glm-4")

        @retry_on_1302(max_tries=6, base_delay=0.02, max_delay=0.1)
        @rate_limited(concurrency=AutoConcurrency(initial=6), key="glm-auto", backend=backend)
        def ask_auto(prompt: str) -> str:
            return create(prompt, "glm-4-air")

        sim.force_next("1302", 1, model="glm-4")
        ask(PROMPT + "a")  # one retry, then an answer
        sim.force_next("1302", 2, model="glm-4")
        assert ask(PROMPT + "b") == "try again later"  # retries exhausted: the fallback answers
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(ask, [f"{PROMPT}{i % 3}" for i in range(9)]))  # three misses, then hits
            list(pool.map(ask_auto, [f"{PROMPT}{i}" for i in range(12)]))  # 6 at once against 2: cuts


def more_calls(backend: LocalBackend, calls: int) -> None:
    """``calls`` more answered calls on the ``glm-4`` key, through the limiter to the simulator."""
    with (
        run_simulator(concurrency=2, latency=0.01, stream_chunk_delay=0) as sim,
        openai.OpenAI(api_key=API_KEY, base_url=sim.base_url, max_retries=0, timeout=10) as client,
    ):

        @rate_limited(concurrency=2, key="glm-4", backend=backend)
        def ask(prompt: str) -> str:
            reply = client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": prompt}])
            return reply.choices[0].message.content or ""

        for i in range(calls):
            ask(f"{PROMPT}-more-{i}")
