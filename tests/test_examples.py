"""Every example runs as a user would run it, against the simulator it starts itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, **extra_env: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLM_API_", "GLM_GUARD_", "ZHIPUAI_"))}
    env.pop("REDIS_URL", None)
    env.update(extra_env)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def simulator_line(out: str) -> tuple[int, int]:
    match = re.search(r"simulator: (\d+) 1302s, peak in flight (\d+)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


@pytest.mark.parametrize("name", ["openai_sdk.py", "zhipuai_sdk.py"])
def test_sdk_examples_unguarded_fail_guarded_do_not(name: str) -> None:
    out = run_example(name)
    unguarded = re.search(r"unguarded: 12 calls, (\d+) failed", out)
    assert unguarded, out
    assert int(unguarded.group(1)) >= 8
    assert "guarded: 12 calls, 0 failed, 0 fallbacks" in out
    assert simulator_line(out) == (0, 2)


HTTP_EXAMPLES = {
    "http_zai.py": ("zai", "zai-sdk: 12 calls, 0 failed, 0 fallbacks"),
    "http_openai.py": ("openai", "openai: 13 calls, 0 failed"),
    "http_langchain.py": ("langchain_openai", "langchain: 13 calls, 0 failed"),
    "http_litellm.py": ("litellm", "litellm: 12 calls, 0 failed"),
    "http_pydantic_ai.py": ("pydantic_ai", "pydantic-ai: 12 calls, 0 failed"),
}


@pytest.mark.parametrize("name", list(HTTP_EXAMPLES))
def test_sdk_family_examples_guarded_at_the_transport(name: str) -> None:
    """Each docs/sdks page includes its example verbatim; the example holds the limit."""
    module, line = HTTP_EXAMPLES[name]
    pytest.importorskip(module)  # zai-sdk is installed on its own (its pyjwt pin conflicts with zhipuai's)
    out = run_example(name)
    assert line in out
    assert simulator_line(out) == (0, 2)
    page = EXAMPLES.parent / "docs" / "sdks" / f"{name.removeprefix('http_').removesuffix('.py')}.md"
    assert f'--8<-- "examples/{name}"' in page.read_text()


def test_llm_client_example_runs_the_seed_reasoner() -> None:
    out = run_example("llm_client.py")
    assert "reasoner: 12 questions, 0 failed, 0 degraded answers" in out
    assert "stream: [glm-sim" in out and "流式回答" in out
    assert simulator_line(out) == (0, 2)


def test_redis_workers_example_shares_one_limit(redis_url: str) -> None:
    out = run_example("redis_workers.py", REDIS_URL=redis_url)
    assert "workers: 3 processes, 18 of 18 calls answered" in out
    assert simulator_line(out) == (0, 2)


def test_redis_workers_example_explains_a_missing_redis_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "redis_workers.py")], capture_output=True, text=True, timeout=30, env=env
    )
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr
