"""``@cached_response`` on every backend.

Tests that take ``backend`` run on the local backend and on a real Redis; those that need a
fake clock, a store of their own or the local store's internals take the local backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from glm_guard import ConfigurationError, cached_response, fallback
from glm_guard._cache_keys import KeyMaker
from glm_guard.backends._base import Backend
from glm_guard.backends._local import LocalBackend, LocalCacheStore

from .helpers import SEED_1302, ErrorWithText


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counting(backend: Backend, **options: Any) -> tuple[list[Any], Any]:
    calls: list[Any] = []

    @cached_response(backend=backend, **options)
    def ask(question: str, temperature: float = 0.7) -> str:
        calls.append((question, temperature))
        return f"answer to {question}"

    return calls, ask


def test_same_arguments_run_the_body_once(backend: Backend) -> None:
    calls, ask = counting(backend)
    assert ask("hi") == ask("hi") == ask(question="hi") == ask("hi", 0.7) == "answer to hi"
    assert len(calls) == 1
    ask("hi", temperature=0.1)
    ask("other")
    assert len(calls) == 3


def test_entries_expire_after_ttl() -> None:
    clock = FakeClock()
    backend = LocalBackend(clock=clock)
    calls, ask = counting(backend, ttl=10)
    ask("q")
    clock.now = 9.9
    ask("q")
    assert len(calls) == 1
    clock.now = 10.1
    ask("q")
    assert len(calls) == 2


def test_entries_expire_after_ttl_in_real_time(backend: Backend) -> None:
    """The fake clock above shows the arithmetic; this shows each store really lets go."""
    calls, ask = counting(backend, ttl=0.3)
    ask("q")
    ask("q")
    assert len(calls) == 1
    time.sleep(0.45)
    ask("q")
    assert len(calls) == 2


async def test_structured_answers_come_back_equal(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(ttl=30, backend=backend, key="structured")
    async def ask(question: str) -> dict[str, Any] | None:
        calls.append(1)
        return None if question == "none" else {"answer": question, "tokens": [1, 2], "来源": "GLM"}

    assert await ask("q") == await ask("q") == {"answer": "q", "tokens": [1, 2], "来源": "GLM"}
    assert await ask("none") is None and await ask("none") is None
    assert len(calls) == 2


def test_maxsize_bounds_the_cache(local_backend: LocalBackend) -> None:
    """On Redis the server's memory policy bounds the shared entries; ``maxsize`` is per process."""
    calls, ask = counting(local_backend, maxsize=2)
    for question in ["a", "b", "c", "a"]:
        ask(question)
    assert [c[0] for c in calls] == ["a", "b", "c", "a"]  # "a" was evicted by "c"


def test_none_is_cached(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(backend=backend)
    def lookup() -> None:
        calls.append(1)

    assert lookup() is None and lookup() is None
    assert len(calls) == 1


def test_exceptions_are_not_cached(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(backend=backend)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ErrorWithText(SEED_1302)
        return "ok"

    with pytest.raises(ErrorWithText):
        flaky()
    assert flaky() == "ok" and flaky() == "ok"
    assert len(calls) == 2


@pytest.mark.parametrize("cache_outside", [True, False])
def test_fallback_answers_are_never_cached(backend: Backend, cache_outside: bool) -> None:
    calls: list[int] = []
    busy = [True]

    def body(question: str) -> str:
        calls.append(1)
        if busy[0]:
            raise ErrorWithText(SEED_1302)
        return "real"

    cache = cached_response(backend=backend)
    degrade = fallback("busy, try later")
    ask = cache(degrade(body)) if cache_outside else degrade(cache(body))
    assert ask("q") == "busy, try later"
    busy[0] = False
    assert ask("q") == "real"
    assert ask("q") == "real"
    assert len(calls) == 2


def test_fallback_answer_is_not_cached_through_an_inner_cache_either(backend: Backend) -> None:
    """cache -> fallback -> cache -> body: neither cache keeps the degraded answer."""
    calls: list[int] = []
    busy = [True]

    @cached_response(backend=backend, key="outer")
    @fallback("degraded")
    @cached_response(backend=backend, key="inner")
    def ask(question: str) -> str:
        calls.append(1)
        if busy[0]:
            raise ErrorWithText(SEED_1302)
        return "real"

    assert ask("q") == "degraded"
    busy[0] = False
    assert ask("q") == "real"


def test_concurrent_identical_calls_in_threads_run_the_body_once(backend: Backend) -> None:
    calls: list[int] = []
    gate = threading.Event()

    @cached_response(backend=backend)
    def slow(question: str) -> str:
        calls.append(1)
        gate.wait(5)
        return question.upper()

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(slow("q"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == ["Q"] * 8
    assert len(calls) == 1


async def test_concurrent_identical_calls_in_tasks_run_the_body_once(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(backend=backend)
    async def slow(question: str) -> str:
        calls.append(1)
        await asyncio.sleep(0.02)
        return question.upper()

    assert await asyncio.gather(*(slow("q") for _ in range(10))) == ["Q"] * 10
    assert len(calls) == 1


async def test_followers_share_the_leaders_error_and_are_not_cached(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(backend=backend)
    async def failing() -> str:
        calls.append(1)
        await asyncio.sleep(0.02)
        raise ErrorWithText(SEED_1302)

    results = await asyncio.gather(*(failing() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ErrorWithText) for r in results)
    assert len(calls) == 1
    with pytest.raises(ErrorWithText):
        await failing()
    assert len(calls) == 2


async def test_a_cancelled_leader_hands_over_to_a_follower(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(backend=backend)
    async def slow() -> str:
        calls.append(1)
        await asyncio.sleep(0.05)
        return "done"

    leader = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await asyncio.wait_for(follower, 2) == "done"
    assert len(calls) == 2


def test_methods_leave_self_out_of_the_key(backend: Backend) -> None:
    calls: list[int] = []

    class Reasoner:
        @cached_response(backend=backend)
        def reason(self, question: str) -> str:
            calls.append(1)
            return question

    assert Reasoner().reason("q") == Reasoner().reason("q") == "q"
    assert len(calls) == 1


def test_keys_are_digests_without_the_prompt() -> None:
    def ask(prompt: str) -> str:
        return prompt

    make = KeyMaker(ask, "ns", None)
    digest = make(("请解释量子纠缠",), {})
    assert "量子" not in digest
    assert len(digest) == 40 and int(digest, 16) >= 0


def test_keys_are_stable_across_processes() -> None:
    code = (
        "from glm_guard._cache_keys import KeyMaker\n"
        "def ask(prompt, model='glm-4', options=None): ...\n"
        "print(KeyMaker(ask, 'ns', None)(('hello',), {'options': {'b': 1, 'a': [1, 2]}}))\n"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True
        )
        digests.add(out.stdout.strip())

    def ask(prompt: str, model: str = "glm-4", options: Any = None) -> None: ...

    digests.add(KeyMaker(ask, "ns", None)(("hello",), {"options": {"a": [1, 2], "b": 1}}))
    assert len(digests) == 1


def test_structured_arguments_are_keyed_by_value(backend: Backend) -> None:
    @dataclasses.dataclass
    class Request:
        model: str
        messages: list[dict[str, str]]

    calls: list[int] = []

    @cached_response(backend=backend)
    def call(request: Request, tags: frozenset[str]) -> int:
        calls.append(1)
        return len(calls)

    first = call(Request("glm-4", [{"role": "user", "content": "hi"}]), frozenset({"a", "b"}))
    again = call(Request("glm-4", [{"role": "user", "content": "hi"}]), frozenset({"b", "a"}))
    assert first == again == 1


def test_an_unserialisable_argument_names_itself(backend: Backend) -> None:
    @cached_response(backend=backend)
    def call(prompt: str, client: object) -> str:
        return prompt

    with pytest.raises(TypeError, match=r"argument 'client'.*key="):
        call("q", object())


def test_an_unserialisable_argument_can_bypass_the_cache(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(backend=backend, unkeyable="bypass")
    def call(prompt: str, client: object) -> str:
        calls.append(1)
        return prompt

    assert call("q", object()) == call("q", object()) == "q"
    assert len(calls) == 2  # not cached, not failed


def test_a_custom_key_function(backend: Backend) -> None:
    calls: list[int] = []

    @cached_response(backend=backend, key=lambda prompt, client: prompt)
    def call(prompt: str, client: object) -> str:
        calls.append(1)
        return prompt

    call("q", object())
    call("q", object())
    assert len(calls) == 1


def test_a_key_function_returning_garbage_says_so(backend: Backend) -> None:
    @cached_response(backend=backend, key=lambda prompt: object())
    def call(prompt: str) -> str:
        return prompt

    with pytest.raises(TypeError, match="key function"):
        call("q")


def test_ttl_zero_stores_nothing(backend: Backend) -> None:
    calls, ask = counting(backend, ttl=0)
    ask("q")
    ask("q")
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ttl": -1}, "ttl"),
        ({"maxsize": 0}, "maxsize"),
        ({"key": ""}, "key"),
        ({"backend": "nope"}, "backend"),
        ({"unkeyable": "skip"}, "unkeyable"),
        ({"serializer": "yaml"}, "serializer"),
    ],
)
def test_bad_arguments_fail_at_decoration(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        cached_response(**kwargs)
    assert caught.value.name == name


def test_generators_are_refused_at_decoration(local_backend: LocalBackend) -> None:
    with pytest.raises(ConfigurationError, match="generator"):

        @cached_response(backend=local_backend)
        def stream() -> Any:
            yield 1


def test_equal_but_differently_typed_arguments_get_different_keys(backend: Backend) -> None:
    """1, 1.0 and True hash alike; the key must keep them apart."""
    calls: list[object] = []

    @cached_response(backend=backend)
    def echo(value: object) -> str:
        calls.append(value)
        return repr(value)

    assert [echo(1), echo(1.0), echo(True), echo(1), echo(True)] == ["1", "1.0", "True", "1", "True"]
    assert calls == [1, 1.0, True]


def test_every_spelling_of_a_call_gets_one_digest() -> None:
    def ask(prompt: str, temperature: float = 0.7) -> str:
        return prompt

    make = KeyMaker(ask, "ns", None)
    assert make(("a",), {}) == make((), {"prompt": "a"}) == make(("a", 0.7), {}) == make(("a",), {"temperature": 0.7})
    assert make(("a",), {}) != make(("a",), {"temperature": 0.1})


def test_in_process_keys_treat_every_spelling_of_a_call_alike() -> None:
    """A local store's keys skip the digest for plain scalars, but bind arguments just the same."""

    def ask(prompt: str, temperature: float = 0.7, *, model: str = "glm-4") -> str:
        return prompt

    def lone(prompt: str) -> str:
        return prompt

    def spread(*parts: str, **options: str) -> str:
        return "".join(parts)

    class Bot:
        def reply(self, prompt: str, temperature: float = 0.7) -> str:
            return prompt

    key = KeyMaker(ask, "ns", None, stable=False)
    same = [(("a",), {}), (("a", 0.7), {}), ((), {"prompt": "a"}), (("a",), {"model": "glm-4"})]
    assert len({key(args, kwargs) for args, kwargs in same}) == 1
    assert key(("a",), {}) != key(("a", 0.1), {}) != key(("a",), {"model": "glm-4-air"})
    digest = key(("a",), {"model": ["x"]})  # not a scalar: the digest, in a tuple of its own
    assert isinstance(digest, tuple) and len(digest) == 1 and len(digest[0]) == 40
    one = KeyMaker(lone, "ns", None, stable=False)
    assert one(("a",), {}) == one((), {"prompt": "a"}) != one((1,), {})
    hexdigest = one((["x"],), {})[0]
    assert one((hexdigest,), {}) != one((["x"],), {})  # a str argument never equals a digest key
    assert one((1,), {}) != one((True,), {}) != one((1.0,), {})
    variadic = KeyMaker(spread, "ns", None, stable=False)
    assert variadic(("a", "b"), {}) != variadic(("ab",), {}) and variadic(("a",), {"x": "1"}) != variadic(("a",), {})
    method = KeyMaker(Bot.reply, "ns", None, stable=False)
    assert method((Bot(), "a"), {}) == method((Bot(), "a", 0.7), {}) == method((Bot(),), {"prompt": "a"})


async def test_waiters_get_the_answer_even_if_the_leader_is_cancelled_giving_its_claim_back() -> None:
    """On a shared store the leader gives its claim back after the answer is stored; the
    calls waiting on it must not depend on that last step finishing."""
    from glm_guard.backends._base import CacheStore

    claim_returned = asyncio.Event()

    class SlowUnclaimStore(CacheStore):  # shared (the default): claims are used
        def __init__(self) -> None:
            self.data: dict[str, object] = {}

        def get(self, key: str) -> tuple[bool, object]:
            return (True, self.data[key]) if key in self.data else (False, None)

        def set(self, key: str, value: object) -> None:
            self.data[key] = value

        async def unclaim_async(self, key: str) -> None:
            claim_returned.set()
            await asyncio.sleep(30)  # a round trip that never ends

    class Store(LocalBackend):
        def cache(self, namespace: str, **options: Any) -> CacheStore:
            return SlowUnclaimStore()

    gate = asyncio.Event()
    runs: list[str] = []

    @cached_response(ttl=60, backend=Store())
    async def ask(question: str) -> str:
        runs.append(question)
        await gate.wait()
        return question.upper()

    leader = asyncio.create_task(ask("q"))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(ask("q"))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.wait_for(claim_returned.wait(), 2)
    leader.cancel()
    assert await asyncio.wait_for(follower, 2) == "Q"
    assert runs == ["q"]
    with pytest.raises(asyncio.CancelledError):
        await leader


def test_an_answer_stored_by_another_process_just_before_the_claim_is_used() -> None:
    """On a shared store the holder can store its answer and let go between our read and our
    claim; the claim then succeeds, and the body must still not run a second time."""
    from glm_guard.backends._base import CacheStore

    class RacingStore(CacheStore):
        def __init__(self) -> None:
            self.reads = 0
            self.unclaimed: list[str] = []

        def get(self, key: str) -> tuple[bool, object]:
            self.reads += 1
            return (False, None) if self.reads == 1 else (True, "from the other process")

        def set(self, key: str, value: object) -> None:
            raise AssertionError("nothing to store: the answer was there")

        def unclaim(self, key: str) -> None:
            self.unclaimed.append(key)

    store = RacingStore()

    class Store(LocalBackend):
        def cache(self, namespace: str, **options: Any) -> CacheStore:
            return store

    @cached_response(ttl=60, backend=Store())
    def ask(question: str) -> str:
        raise AssertionError("the body ran although another process had answered")

    assert ask("q") == "from the other process"
    assert store.reads == 2 and len(store.unclaimed) == 1  # the claim taken is given back


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_use_a_cache_whose_lock_another_thread_held() -> None:
    store = LocalCacheStore(ttl=60, maxsize=8)
    store.set("a", "A")
    store._lock.acquire()  # as if another thread were inside the cache at the moment of fork()
    try:
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)  # a deadlock ends the child instead of hanging the test run
            store.set("b", "B")
            os._exit(0 if store.get("a") == (True, "A") and store.get("b") == (True, "B") else 1)
    finally:
        store._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


async def test_a_fallback_answer_from_a_child_task_is_not_cached(backend: Backend) -> None:
    """``asyncio.wait_for`` runs the inner call in a task of its own: the context mark stays there."""
    failures = [1]

    @fallback("DEGRADED")
    async def llm(question: str) -> str:
        if failures[0]:
            failures[0] -= 1
            raise ErrorWithText(SEED_1302)
        return f"real {question}"

    @cached_response(backend=backend)
    async def answer(question: str) -> str:
        return await asyncio.wait_for(llm(question), 5)

    assert await answer("q") == "DEGRADED"
    assert await answer("q") == "real q"  # the degraded answer was not cached
