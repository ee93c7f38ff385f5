"""The four decorators stack in any order, on every kind of callable.

The stacking orders run on every backend (``backend``); binding a method is the decorators'
own business, so those cases run on the local backend.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import glm_guard
from glm_guard import cached_response, fallback, rate_limited, retry_on_1302
from glm_guard.backends._base import Backend
from glm_guard.backends._local import LocalBackend

from .conftest import LimiterState
from .helpers import SEED_1302, ErrorWithText

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Factory = Callable[[Backend], Callable[[Any], Any]]

FACTORIES: dict[str, Factory] = {
    "cache": lambda backend: cached_response(ttl=60, backend=backend),
    "fallback": lambda backend: fallback("fallback"),
    "retry": lambda backend: retry_on_1302(3, base_delay=0, max_delay=0),
    "limit": lambda backend: rate_limited(100, 1.0, concurrency=4, backend=backend, cooldown=0.01),
}
ORDERS = list(itertools.permutations(FACTORIES))


def stack(order: tuple[str, ...], fn: Callable[..., Any], backend: Backend) -> Callable[..., Any]:
    for name in reversed(order):  # order is outermost first
        fn = FACTORIES[name](backend)(fn)
    return fn


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: ">".join(o))
def test_every_order_works_on_a_sync_function(order: tuple[str, ...], backend: Backend) -> None:
    failures = [2]

    def ask(question: str, temperature: float = 0.5) -> str:
        """Ask GLM."""
        if failures[0] > 0:
            failures[0] -= 1
            raise ErrorWithText(SEED_1302)
        return f"real {question}"

    guarded = stack(order, ask, backend)
    assert guarded.__name__ == "ask" and guarded.__doc__ == "Ask GLM."
    assert inspect.signature(guarded) == inspect.signature(ask)
    assert not inspect.iscoroutinefunction(guarded)
    first = guarded("q")
    assert first in ("real q", "fallback")
    failures[0] = 0
    assert guarded("q") == "real q"  # a fallback answer was never cached


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: ">".join(o))
async def test_every_order_works_on_an_async_function(order: tuple[str, ...], backend: Backend) -> None:
    failures = [2]

    async def ask(question: str) -> str:
        """Ask GLM."""
        await asyncio.sleep(0)
        if failures[0] > 0:
            failures[0] -= 1
            raise ErrorWithText(SEED_1302)
        return f"real {question}"

    guarded = stack(order, ask, backend)
    assert guarded.__name__ == "ask" and guarded.__doc__ == "Ask GLM."
    assert inspect.iscoroutinefunction(guarded)
    assert inspect.signature(guarded) == inspect.signature(ask)
    assert await guarded("q") in ("real q", "fallback")
    failures[0] = 0
    assert await guarded("q") == "real q"


def test_recommended_order_retries_through_the_limiter(backend: Backend, limiter_state: LimiterState) -> None:
    """cache > fallback > retry > limit: each attempt takes a permit, a hit takes none."""
    attempts: list[int] = []

    @cached_response(backend=backend)
    @fallback("busy")
    @retry_on_1302(3, base_delay=0, max_delay=0)
    @rate_limited(100, 60.0, key="k", backend=backend, cooldown=0)
    def ask(question: str) -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ErrorWithText(SEED_1302)
        return "real"

    assert ask("q") == "real"
    assert ask("q") == "real"
    assert len(attempts) == 3
    assert limiter_state.starts("k") == 3  # three attempts, three permits; the hit took none


BINDINGS = [
    "function",
    "method",
    "classmethod_inside",
    "classmethod_outside",
    "staticmethod_inside",
    "staticmethod_outside",
]


@pytest.mark.parametrize("decorator", list(FACTORIES))
@pytest.mark.parametrize("binding", BINDINGS)
def test_binding_cases(decorator: str, binding: str, local_backend: LocalBackend) -> None:
    deco = FACTORIES[decorator](local_backend)

    if binding == "function":

        @deco
        def plain(x: int) -> int:
            return x * 2

        assert plain(3) == 6
        return

    class Model:
        factor = 2

        def __init__(self) -> None:
            self.factor = 3

        if binding == "method":

            @deco
            def run(self, x: int) -> int:
                return x * self.factor

        elif binding == "classmethod_inside":

            @classmethod
            @deco
            def run(cls, x: int) -> int:
                return x * cls.factor

        elif binding == "classmethod_outside":

            @deco
            @classmethod
            def run(cls, x: int) -> int:
                return x * cls.factor

        elif binding == "staticmethod_inside":

            @staticmethod
            @deco
            def run(x: int) -> int:
                return x * 5

        else:

            @deco
            @staticmethod
            def run(x: int) -> int:
                return x * 5

    expected = {"method": 12, "classmethod_inside": 8, "classmethod_outside": 8}.get(binding, 20)
    assert Model().run(4) == expected
    if binding != "method":
        assert Model.run(4) == expected


@pytest.mark.parametrize("decorator", list(FACTORIES))
async def test_async_method(decorator: str, local_backend: LocalBackend) -> None:
    deco = FACTORIES[decorator](local_backend)

    class Reasoner:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        @deco
        async def reason(self, question: str) -> str:
            await asyncio.sleep(0)
            return self.prefix + question

    reasoner = Reasoner("A:")
    assert inspect.iscoroutinefunction(Reasoner.reason)
    assert await reasoner.reason("q") == "A:q"


def test_nested_function_in_a_loop(local_backend: LocalBackend) -> None:
    results = []
    for i in range(3):

        @rate_limited(10, 1.0, key=f"nested-{i}", backend=local_backend)
        def square(x: int = i) -> int:
            return x * x

        results.append(square())
    assert results == [0, 1, 4]


async def test_the_seed_reasoner_example_runs() -> None:
    namespace = runpy.run_path(str(EXAMPLES / "reasoning_module.py"), run_name="example")
    results = await namespace["main"]()
    assert len(results) == 24
    assert all(result.confidence == 0.9 for result in results)  # no call fell back
    busy = await _busy_answer(namespace)
    assert busy.answer == "抱歉,系统繁忙,请稍后重试。" and busy.confidence == 0.0


async def _busy_answer(namespace: dict[str, Any]) -> Any:
    """With the API down for good, the reasoner answers with the seed's busy message."""

    async def always_1302(*args: Any, **kwargs: Any) -> str:
        raise namespace["GLMError"]('429 {"error":{"code":"1302","message":"busy"}}')

    with glm_guard.set_testing(True):
        reason = namespace["ChainOfThoughtReasoner"].reason
        globals_of_reason = inspect.unwrap(reason).__globals__
        original = globals_of_reason["call_glm_api"]
        globals_of_reason["call_glm_api"] = always_1302
        try:
            return await namespace["ChainOfThoughtReasoner"]().reason("never cached")
        finally:
            globals_of_reason["call_glm_api"] = original
