"""What the provider says is left of its tokens lowers the guard's budget until the reset.

Another program on the same account (a script, a colleague's notebook) spends tokens the guard
never sees; the provider's headers on the guard's next answer tell it, and every process of the
key then holds back until the provider's count resets, instead of drawing 429s.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from glm_guard import RateLimitTimeout, rate_limited
from glm_guard._provider_limits import tokens_left
from glm_guard.backends._base import Backend, LimitPolicy
from glm_guard.backends._redis import RedisBackend
from glm_guard.backends._window import WindowState
from glm_guard.testing import run_provider_simulator
from glm_guard.testing._provider import ProviderSimulator

from .helpers import admitted_at_once, in_threads_at_once

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "Say hello."}]  # 10 prompt tokens, as the simulator counts
NOW = 1_000.0


def _at(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(NOW + seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def test_tokens_left_is_read_from_openai_and_anthropic_headers() -> None:
    openai = {"x-ratelimit-remaining-tokens": "1500", "x-ratelimit-reset-tokens": "6m0s"}
    assert tokens_left(openai, NOW) == (1500, 360.0)
    azure = {"x-ratelimit-remaining-tokens": "90", "x-ratelimit-reset-tokens": "250ms"}
    assert tokens_left(azure, NOW) == (90, 0.25)
    anthropic = {  # the smallest count that applies, with its own reset
        "anthropic-ratelimit-tokens-remaining": "900",
        "anthropic-ratelimit-tokens-reset": _at(30),
        "anthropic-ratelimit-input-tokens-remaining": "500",
        "anthropic-ratelimit-input-tokens-reset": _at(12),
        "anthropic-ratelimit-output-tokens-remaining": "800",
        "anthropic-ratelimit-output-tokens-reset": _at(5),
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": _at(1),
    }
    assert tokens_left(anthropic, NOW) == (500, 12.0)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-tokens": "10"},  # no reset: nothing to date it by
        {"x-ratelimit-remaining-tokens": "-5", "x-ratelimit-reset-tokens": "1s"},
        {"x-ratelimit-remaining-tokens": "nan", "x-ratelimit-reset-tokens": "1s"},
        {"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "99999h"},  # not believed
        {"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "inf"},
        {"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "0ms"},  # already reset
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"},  # requests, not tokens
        {"anthropic-ratelimit-tokens-remaining": "10", "anthropic-ratelimit-tokens-reset": "yesterday"},
    ],
)
def test_planted_or_partial_token_headers_are_ignored(headers: dict[str, str]) -> None:
    assert tokens_left(headers, NOW) is None


def test_the_budget_is_lowered_once_until_the_reset() -> None:
    """The local algorithm on its own clock: two reports of 100 left lower a budget of 1000 to 100
    (not to 100 less each time), until the reset, and a reset beyond the window holds one window."""
    policy = LimitPolicy(None, 10.0, None, tokens=1000, reserve=60)
    state = WindowState()
    state.admit(policy, 0.0)
    state.lower_budget(100, 4.0, 1000, 10.0, 1.0)
    state.lower_budget(100, 4.0, 1000, 10.0, 1.5)
    assert state.spent_total == 900  # 60 reserved, 840 the provider's word
    assert state.next_admission(policy, 2.0) == 2.0  # 100 left: 60 fit
    state.admit(policy, 2.0)
    assert state.next_admission(policy, 2.5) == 5.0  # 40 left until the reset at 1.0 + 4.0
    assert state.next_admission(policy, 5.0) == 5.0
    later = WindowState()
    later.lower_budget(0, 50.0, 1000, 10.0, 0.0)
    assert later.next_admission(policy, 0.0) == 10.0  # held one window; the next answer says again


def _post(client: httpx.Client, style: str, max_tokens: int) -> httpx.Response:
    if style == "anthropic":
        body = {"model": "claude-sonnet-4-5", "max_tokens": max_tokens, "messages": HELLO}
        return client.post("/v1/messages", json=body)
    return client.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": max_tokens})


def _client(sim: ProviderSimulator, account: str) -> httpx.Client:
    if sim.style == "anthropic":
        headers = {"x-api-key": account, "anthropic-version": "2023-06-01"}
    else:
        headers = {"authorization": f"Bearer {account}"}
    return httpx.Client(base_url=sim.base_url, headers=headers, timeout=5)


def _run(sim: ProviderSimulator, backend: Backend, account: str, *, headers_followed: bool) -> tuple[int, list[str]]:
    """Another client spends 700 of the account's 1000 tokens per 2 s; the guard makes one call,
    then twelve at once (30 tokens each, their usage what the provider counts).  Returns the 429s
    the simulator answered, and what became of the twelve."""
    limited_before = sim.limited
    with _client(sim, account) as outside, _client(sim, account) as client:
        assert _post(outside, sim.style, 690).status_code == 200  # 10 + 690 counted, unknown to the guard

        @rate_limited(
            tokens=1000, period=2.0, key=account, backend=backend, max_wait=1.0, cooldown=0, estimate=lambda: 30
        )
        def ask() -> dict[str, Any]:
            answer = _post(client, sim.style, 20)  # 10 + 20: the estimate
            if answer.status_code != 200:
                raise RuntimeError(f"HTTP {answer.status_code}")
            usage = answer.json()["usage"]
            return {"headers": answer.headers, "usage": usage} if headers_followed else {"usage": usage}

        ask()  # 270 left, which is more than this call needs: the key does not cool down
        outcomes: list[str] = []

        def one() -> None:
            try:
                ask()
                outcomes.append("ok")
            except RateLimitTimeout:
                outcomes.append("waits")
            except RuntimeError:
                outcomes.append("429")

        in_threads_at_once(one, 12)
        if headers_followed:  # once the other client's tokens left the provider's window, the budget is back
            time.sleep(2.3)
            for _ in range(3):
                ask()
    return sim.limited - limited_before, sorted(outcomes)


@pytest.mark.parametrize("style", ["openai", "anthropic"])
def test_tokens_spent_outside_the_guard_hold_its_calls_back(backend: Backend, style: Any) -> None:
    with run_provider_simulator(style, tpm=1000, period=2.0) as sim:
        limited, outcomes = _run(sim, backend, "sk-unheard", headers_followed=False)
        assert limited == 3 and outcomes.count("ok") == 9  # the guard believed 940 were left
        limited, outcomes = _run(sim, backend, "sk-heard", headers_followed=True)
        assert limited == 0  # the provider's 270 left became the budget's until its reset
        assert outcomes == ["ok"] * 9 + ["waits"] * 3


_TOLD = textwrap.dedent(
    """
    import json, sys
    from glm_guard import rate_limited
    from glm_guard.backends import RedisBackend

    url, key = sys.argv[1], sys.argv[2]
    backend = RedisBackend(url)
    headers = {"x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "20s"}

    @rate_limited(tokens=1000, period=30, key=key, backend=backend, max_wait=0, estimate=lambda: 60)
    def call():
        return {"headers": headers, "usage": {"total_tokens": 60}}

    call()
    backend.close()
    print(json.dumps({"ok": True}))
    """
)


@pytest.mark.redis
def test_what_one_process_hears_of_tokens_left_holds_back_another_redis(redis_url: str) -> None:
    """Two processes in turn hear 100 tokens are left for 20 s: the budget keeps 40, not 880 (no
    report) nor less (reports stacked), so a third process fits one call of 40."""
    key = "told-left"
    for _ in range(2):  # a second report from another process does not stack on the first
        told = subprocess.run(
            [sys.executable, "-c", _TOLD, redis_url, key], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert told.returncode == 0, told.stderr
        assert json.loads(told.stdout.strip().splitlines()[-1]) == {"ok": True}
    other = RedisBackend(redis_url)
    try:

        @rate_limited(tokens=1000, period=30, key=key, backend=other, max_wait=0, estimate=lambda: 40)
        def call() -> dict[str, Any]:
            return {"usage": {"total_tokens": 40}}

        assert admitted_at_once(call, 30) == 1  # 60 + 840 after the first report; 60 more and no more after the second
    finally:
        other.close()
