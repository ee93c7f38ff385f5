"""Cache integrity: keys no argument can forge, entries no one without the secret can plant.

Keys: two calls share an entry only when their arguments are the same values of the same
types, so no argument (a dict shaped like a tagged encoding, a tuple posing as a list) can
read another call's answer.  Values: what comes back from a shared store is what was stored,
types included.  Entries: with ``GLM_GUARD_CACHE_SECRET`` set, an entry is served only under
the key it was signed for and before its signed deadline.  Memory: the prompts of past calls
are not kept alive by the key machinery.  Expiry: every key the cache writes expires.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import gc
import math
import tracemalloc
import uuid

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import glm_guard
from glm_guard import cached_response
from glm_guard._cache_keys import KeyMaker
from glm_guard.backends._base import Backend

SECRET = "integrity-test-secret"


class Colour(enum.IntEnum):
    RED = 1


class Mood(enum.Enum):
    HAPPY = "h"


class Label(str):
    """A str subclass: JSON would hand back a plain str."""


@dataclasses.dataclass(frozen=True)
class Point:
    x: object
    y: object


def use_secret(monkeypatch: pytest.MonkeyPatch, secret: str | None) -> None:
    if secret is None:
        monkeypatch.delenv("GLM_GUARD_CACHE_SECRET", raising=False)
    else:
        monkeypatch.setenv("GLM_GUARD_CACHE_SECRET", secret)
    glm_guard.reload_settings()


def cache_keys(client: redis.Redis) -> set[bytes]:
    return {k for k in client.keys("glm_guard:cache:*") if not k.endswith(b":fill")}


# -- keys: unambiguous across types --------------------------------------------------------------

# Pairs that the old encoding (plain JSON, dicts tagged by "__name__" keys) gave one key.
LOOKALIKES: list[tuple[object, object]] = [
    ((1, 2), [1, 2]),
    ({"__bytes__": "6869"}, b"hi"),
    ({"__set__": ["1", "2"]}, {1, 2}),
    ({"__time__": "2024-01-02"}, datetime.date(2024, 1, 2)),
    ({"__str__": "12345678-1234-5678-1234-567812345678"}, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ({"__str__": "1.5"}, decimal.Decimal("1.5")),
    ({"__enum__": "Mood", "value": "h"}, Mood.HAPPY),
    (Colour.RED, 1),
    ({1: "a"}, {"1": "a"}),
    ({"__dataclass__": "Point", "fields": {"x": 1, "y": 2}}, Point(1, 2)),
    (Point((1,), 2), Point([1], 2)),
    ([(1,)], [[1]]),
    ({"k": (1,)}, {"k": [1]}),
]


@pytest.mark.parametrize(("first", "second"), LOOKALIKES, ids=[type(a).__name__ for a, _ in LOOKALIKES])
def test_lookalike_arguments_never_share_an_entry(backend: Backend, first: object, second: object) -> None:
    calls: list[object] = []

    @cached_response(backend=backend, key=f"lookalike-{id(first)}")
    def describe(value: object) -> str:
        calls.append(value)
        return repr(value)

    assert describe(first) == repr(first)
    assert describe(second) == repr(second)  # the old encoding answered with repr(first)
    assert describe(first) == repr(first) and describe(second) == repr(second)
    assert len(calls) == 2


def test_a_custom_key_function_is_encoded_unambiguously_too(backend: Backend) -> None:
    @cached_response(backend=backend, key=lambda value: value)
    def describe(value: object) -> str:
        return repr(value)

    assert describe((1, 2)) == "(1, 2)"
    assert describe([1, 2]) == "[1, 2]"


def _typed(value: object) -> object:
    """A structure equal for two values exactly when they are equal with the same types."""
    if isinstance(value, dict):
        return ("dict", frozenset((_typed(k), _typed(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, frozenset(_typed(item) for item in value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_typed(item) for item in value))
    if isinstance(value, float) and value == 0:
        return ("float", 0.0)  # 0.0 == -0.0: one value, one key
    return (type(value).__name__, value)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-2, 2, allow_nan=False).filter(lambda f: f in (0.0, 1.0, -1.0, 0.5)),
    st.sampled_from(["", "a", "1", "__bytes__", "__set__", "__str__", "6869", "[1]", "null", "true"]),
    st.binary(max_size=2),
)
_hashables = st.recursive(
    _scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=2), max_leaves=4
)
_values = st.recursive(
    _hashables,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.dictionaries(_hashables, inner, max_size=2)
        | st.sets(_hashables, max_size=2)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(_values, _values)
def test_two_arguments_share_a_key_exactly_when_they_are_the_same_typed_value(first: object, second: object) -> None:
    def describe(value: object) -> None: ...

    make = KeyMaker(describe, "ns", None)
    same_key = make((first,), {}) == make((second,), {})
    assert same_key == (_typed(first) == _typed(second)), (first, second)


def test_keys_hold_no_argument_text_and_are_stable_for_equal_dicts() -> None:
    def ask(options: object) -> None: ...

    make = KeyMaker(ask, "ns", None)
    assert make(({"b": 1, "a": 2, 3: "x"},), {}) == make(({3: "x", "a": 2, "b": 1},), {})
    assert make(({1, "1"},), {}) == make(({"1", 1},), {})
    assert "secret-prompt" not in make((["secret-prompt"],), {})


def test_variadic_arguments_never_pass_for_named_ones() -> None:
    def spread(*args: object, **kwargs: object) -> None: ...

    make = KeyMaker(spread, "ns", None)
    assert make((1,), {}) != make((), {"args": (1,)})
    assert make((), {"x": 1}) != make((), {"kwargs": {"x": 1}})
    assert make((1,), {"x": 1}) == make((1,), {"x": 1})


def test_a_circular_argument_is_refused_naming_itself(backend: Backend) -> None:
    @cached_response(backend=backend)
    def ask(messages: object) -> str:
        return "x"

    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="argument 'messages'"):
        ask(loop)


# -- memory: past prompts are not kept alive -----------------------------------------------------


@pytest.mark.redis
def test_caching_large_prompts_on_redis_keeps_no_prompt_text(redis_url: str) -> None:
    count, size = 40, 256 * 1024

    @cached_response(backend=redis_url, key="large-prompts")
    def ask(prompt: str) -> str:
        return str(len(prompt))

    ask("warm up: connections, scripts")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            ask(f"{i:08d}" + "x" * size)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < count * size / 10, f"{retained} bytes retained after {count} prompts of {size} bytes"


def test_nan_is_not_a_problem_for_keys() -> None:
    def ask(value: float) -> None: ...

    make = KeyMaker(ask, "ns", None)
    assert make((math.nan,), {}) == make((float("nan"),), {})
    assert make((0.0,), {}) == make((-0.0,), {})
