"""``@fallback``: which errors it answers, with what, and how it marks the answer."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import glm_guard
from glm_guard import ConfigurationError, GLMRateLimitException, RateLimitTimeout, fallback

from .helpers import SEED_1113, SEED_1302, ErrorWithText


@dataclasses.dataclass
class ReasoningResult:
    answer: str
    confidence: float


def test_returns_the_value_on_a_rate_limit_error() -> None:
    @fallback(ReasoningResult("busy", 0.0))
    def reason(question: str) -> ReasoningResult:
        raise ErrorWithText(SEED_1302)

    result = reason("q")
    assert result == ReasoningResult("busy", 0.0)
    assert isinstance(result, ReasoningResult)
    assert glm_guard.is_degraded()


def test_calls_the_callable_with_the_same_arguments() -> None:
    seen: list[tuple[object, ...]] = []

    def smaller_model(question: str, *, temperature: float) -> str:
        seen.append((question, temperature))
        return "small answer"

    @fallback(smaller_model)
    def reason(question: str, *, temperature: float) -> str:
        raise GLMRateLimitException(code="1302")

    assert reason("q", temperature=0.3) == "small answer"
    assert seen == [("q", 0.3)]


async def test_an_async_fallback_is_awaited() -> None:
    async def smaller_model(question: str) -> str:
        await asyncio.sleep(0)
        return f"small: {question}"

    @fallback(smaller_model)
    async def reason(question: str) -> str:
        raise RateLimitTimeout("k", 1.0, 3.0)

    assert asyncio.iscoroutinefunction(reason)
    assert await reason("q") == "small: q"


def test_other_errors_propagate_untouched() -> None:
    original = ValueError("bug")

    @fallback("never")
    def reason() -> str:
        raise original

    with pytest.raises(ValueError) as caught:
        reason()
    assert caught.value is original


def test_permanent_glm_errors_are_not_rate_limits_by_default() -> None:
    @fallback("never")
    def reason() -> str:
        raise ErrorWithText(SEED_1113)

    with pytest.raises(ErrorWithText):
        reason()


def test_custom_on_types_and_predicates() -> None:
    @fallback("timeout answer", on=(TimeoutError, ConnectionError))
    def by_type() -> str:
        raise TimeoutError

    @fallback("predicate answer", on=lambda error: "quota" in str(error))
    def by_predicate() -> str:
        raise RuntimeError("quota exhausted")

    assert by_type() == "timeout answer"
    assert by_predicate() == "predicate answer"


def test_success_is_returned_unmarked_even_after_a_fallback() -> None:
    failing = [True]

    @fallback("busy")
    def reason() -> str:
        if failing[0]:
            raise GLMRateLimitException(code="1302")
        return "real"

    assert reason() == "busy"
    assert glm_guard.is_degraded()
    failing[0] = False
    assert reason() == "real"
    assert not glm_guard.is_degraded()


def test_bad_arguments_fail_at_decoration() -> None:
    with pytest.raises(ConfigurationError) as caught:
        fallback("x", on=42)  # type: ignore[arg-type]
    assert caught.value.name == "on"

    async def async_answer() -> str:
        return "x"

    with pytest.raises(ConfigurationError) as caught:

        @fallback(async_answer)
        def sync_reason() -> str:
            return "y"

    assert caught.value.name == "value_or_callable"


def test_a_fallback_none_elsewhere_does_not_stop_caches_storing_none() -> None:
    """Fallback answers were once remembered by ``id()``: ``None``, ``""`` and small ints are shared objects."""

    @fallback(None)
    def busy() -> None:
        raise ErrorWithText(SEED_1302)

    runs: list[str] = []

    @glm_guard.cached_response(ttl=60)
    def lookup(name: str) -> None:
        runs.append(name)
        return None

    assert busy() is None and glm_guard.is_degraded()
    for _ in range(3):
        assert lookup("x") is None
    assert runs == ["x"]  # the body ran once: None is a value like any other


@pytest.mark.parametrize("spawn", ["gather", "to_thread"])
async def test_a_fallback_inside_a_child_task_or_thread_is_not_cached(spawn: str) -> None:
    failures = [1]

    @fallback("DEGRADED")
    def llm_sync(question: str) -> str:
        if failures[0]:
            failures[0] -= 1
            raise ErrorWithText(SEED_1302)
        return f"real {question}"

    @fallback("DEGRADED")
    async def llm(question: str) -> str:
        return llm_sync(question)

    @glm_guard.cached_response(ttl=60)
    async def answer(question: str) -> str:
        if spawn == "gather":
            (result,) = await asyncio.gather(llm(question))
            return result
        return await asyncio.to_thread(llm_sync, question)

    assert await answer("q") == "DEGRADED"
    assert await answer("q") == "real q"  # the degraded answer was not cached
    assert await answer("q") == "real q"
