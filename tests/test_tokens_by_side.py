"""``tokens_of``: a budget of input or of output tokens, for providers that limit them apart.

Anthropic limits input tokens per minute and output tokens per minute separately (ITPM, OTPM).
Two decorators with a key each keep both; the simulator in Anthropic style enforces both and
answers 429 to the first request over either.
"""

from __future__ import annotations

import datetime
import threading
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from glm_guard import ConfigurationError, count_tokens, rate_limited
from glm_guard._provider_limits import tokens_left
from glm_guard._token_budget import by_characters, estimate_call, tokens_used
from glm_guard.backends._base import Backend
from glm_guard.testing import run_provider_simulator

from .test_tokens import most_tokens_in_window

PERIOD = 1.0  # the simulator's window
GUARD_PERIOD = 1.1  # the guard's: the network's jitter moves starts at the provider by a few ms


def test_each_side_estimates_its_own_part_of_the_call() -> None:
    request = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 30, "n": 2}
    prompt = 3 + 4 + count_tokens("x" * 40)
    assert estimate_call(request, count_tokens, "input") == prompt
    assert estimate_call(request, count_tokens, "output") == 60  # max_tokens per answer, two answers
    assert estimate_call(request, count_tokens) == prompt + 60


def test_each_side_reads_its_own_usage() -> None:
    openai = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=3, completion_tokens=4, total_tokens=7))
    assert (tokens_used(openai, "input"), tokens_used(openai, "output"), tokens_used(openai)) == (3, 4, 7)
    # Anthropic: a cache write counts as input; a cache read does not count towards its input limit.
    anthropic = {
        "usage": {"input_tokens": 5, "output_tokens": 6, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 9}
    }
    assert (tokens_used(anthropic, "input"), tokens_used(anthropic, "output"), tokens_used(anthropic)) == (7, 6, 13)
    assert tokens_used({"usage": {"total_tokens": 12}}, "output") is None  # a total alone says nothing of a side


def test_tokens_of_is_checked_when_decorating() -> None:
    with pytest.raises(ConfigurationError, match="tokens_of"):
        rate_limited(tokens=100, tokens_of="prompt")
    with pytest.raises(ConfigurationError, match="tokens_of"):
        rate_limited(10, 60, tokens_of="input")  # nothing to count them for


def _run_callers(call: Any, callers: int, seconds: float) -> None:
    """``callers`` threads calling ``call()`` until ``seconds`` have passed."""
    end = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < end:
            call()

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 20)


@pytest.mark.parametrize(("binding", "itpm", "otpm"), [("output", 2_000, 100), ("input", 60, 2_000)])
def test_input_and_output_budgets_keep_both_anthropic_limits(
    backend: Backend, binding: str, itpm: int, otpm: int
) -> None:
    with run_provider_simulator("anthropic", itpm=itpm, otpm=otpm, period=PERIOD) as sim:
        http = httpx.Client(base_url=sim.base_url, headers={"x-api-key": "sk-ant-test"}, timeout=10)
        name = f"sides-{binding}-{id(backend)}"

        # by_characters counts the prompt as the simulator does (a quarter token per character).
        @rate_limited(tokens=itpm, period=GUARD_PERIOD, tokens_of="input", key=f"{name}-in", backend=backend,
                      tokenizer=by_characters)  # fmt: skip
        @rate_limited(tokens=otpm, period=GUARD_PERIOD, tokens_of="output", key=f"{name}-out", backend=backend)
        def ask(**request: Any) -> dict[str, Any]:
            answer = http.post("/v1/messages", json=request)
            answer.raise_for_status()  # a 429 fails the test
            return {"usage": answer.json()["usage"]}

        # 3 + 4 + 12 = 19 input tokens, 20 output tokens: 3 calls per window at itpm 60, 5 at otpm 100.
        request = {"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "x" * 48}]}
        _run_callers(lambda: ask(**request), callers=6, seconds=3 * PERIOD)
        http.close()
        assert sim.limited == 0
        inputs = [(at, prompt) for at, prompt, _ in sim.sides]
        outputs = [(at, output) for at, _, output in sim.sides]
        assert most_tokens_in_window(inputs, PERIOD) <= itpm
        assert most_tokens_in_window(outputs, PERIOD) <= otpm
        # The binding side's budget is used up to its last call's worth in some window: counting
        # both sides against it would leave half of it unused.
        used, budget, size = (inputs, itpm, 19) if binding == "input" else (outputs, otpm, 20)
        assert most_tokens_in_window(used, GUARD_PERIOD) > budget - size


def test_the_anthropic_sdk_keeps_both_limits_with_two_budgets(backend: Backend) -> None:
    anthropic = pytest.importorskip("anthropic")  # in the test group: a skip fails CI
    with run_provider_simulator("anthropic", itpm=2_000, otpm=100, period=PERIOD) as sim:
        client = anthropic.Anthropic(api_key="sk-ant-test", base_url=sim.base_url, max_retries=0)
        name = f"sdk-sides-{id(backend)}"

        @rate_limited(tokens=2_000, period=GUARD_PERIOD, tokens_of="input", key=f"{name}-in", backend=backend,
                      tokenizer=by_characters)  # fmt: skip
        @rate_limited(tokens=100, period=GUARD_PERIOD, tokens_of="output", key=f"{name}-out", backend=backend)
        def ask(**request: Any) -> Any:
            return client.messages.create(**request)  # a Message: its usage settles both budgets

        request = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "x" * 48}]}
        _run_callers(lambda: ask(**request), callers=6, seconds=3 * PERIOD)
        client.close()
        assert sim.limited == 0  # max_retries=0: any 429 would have failed a call
        outputs = [(at, output) for at, _, output in sim.sides]
        # Counted at the provider, as above: its window, not the guard's longer one, so a
        # thread's request arriving tens of ms after its grant on a busy host is no excess.
        assert most_tokens_in_window(outputs, PERIOD) <= 100
        assert most_tokens_in_window(outputs, GUARD_PERIOD) > 100 - 20  # and the budget was used


def test_a_side_budget_follows_its_own_side_of_the_anthropic_headers() -> None:
    reset = "2026-12-05T00:00:30Z"
    now = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC).timestamp()
    headers = {
        "anthropic-ratelimit-input-tokens-remaining": "10",
        "anthropic-ratelimit-input-tokens-reset": reset,
        "anthropic-ratelimit-output-tokens-remaining": "900",
        "anthropic-ratelimit-output-tokens-reset": reset,
    }
    assert tokens_left(headers, now, "input") == (10, 30.0)
    assert tokens_left(headers, now, "output") == (900, 30.0)  # the input side's shortage is not its own
    assert tokens_left(headers, now) == (10, 30.0)  # a budget of both sides heeds the smaller
