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
from glm_guard import ConfigurationError, cached_response
from glm_guard._cache_keys import KeyMaker
from glm_guard.backends._base import Backend
from glm_guard.backends._redis import RedisBackend

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


def test_nan_is_not_a_problem_for_keys() -> None:
    def ask(value: float) -> None: ...

    make = KeyMaker(ask, "ns", None)
    assert make((math.nan,), {}) == make((float("nan"),), {})
    assert make((0.0,), {}) == make((-0.0,), {})


def test_a_circular_argument_is_refused_naming_itself(backend: Backend) -> None:
    @cached_response(backend=backend)
    def ask(messages: object) -> str:
        return "x"

    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="argument 'messages'"):
        ask(loop)


# -- values: a shared store gives back what was stored --------------------------------------------

RETURNED: list[object] = [
    {"__bytes__": "6869"},
    {"__set__": ["1"], "__enum__": "x"},
    [1, 2],
    (1, 2),
    Colour.RED,
    Label("label"),
    {"nested": [{"__time__": "2024-01-02"}, None, 1.5, True]},
    "text",
    "lone surrogate \udc80 and 量子",
    0,
    10**5000,  # more digits than int() parses back by default
]


@pytest.mark.parametrize("index", range(len(RETURNED)), ids=[type(v).__name__ for v in RETURNED])
def test_values_come_back_with_their_types(backend: Backend, index: int) -> None:
    calls: list[int] = []

    @cached_response(backend=backend, key=f"returned-{index}")
    def produce(i: int) -> object:
        calls.append(i)
        return RETURNED[i]

    first, second = produce(index), produce(index)
    assert _typed(first) == _typed(second) == _typed(RETURNED[index])
    assert len(calls) in (1, 2)  # 2: a value JSON cannot keep is returned, not cached


# -- entries: with a secret, only our own, under their own key, before their deadline -------------


@pytest.mark.redis
def test_pickle_stores_need_a_secret_even_when_built_directly(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="GLM_GUARD_CACHE_SECRET"):
        RedisBackend(redis_url).cache("n", ttl=60, maxsize=8, serializer="pickle")


@pytest.mark.redis
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_with_a_secret_an_entry_planted_without_it_is_a_miss(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, serializer: str
) -> None:
    use_secret(monkeypatch, None)

    @cached_response(backend=redis_url, key="planted")
    def forger(question: str) -> str:
        return "planted answer"

    forger("q")  # an unsigned entry under the very key ask("q") reads
    use_secret(monkeypatch, SECRET)
    calls: list[str] = []

    @cached_response(backend=redis_url, key="planted", serializer=serializer)
    def ask(question: str) -> str:
        calls.append(question)
        return "real answer"

    assert ask("q") == "real answer"
    assert ask("q") == "real answer" and calls == ["q"]


@pytest.mark.redis
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_with_a_secret_a_signed_entry_moved_to_another_key_is_a_miss(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, serializer: str
) -> None:
    use_secret(monkeypatch, SECRET)
    calls: list[str] = []

    @cached_response(backend=redis_url, key="moved", serializer=serializer)
    def ask(question: str) -> str:
        calls.append(question)
        return f"answer to {question}"

    @cached_response(backend=redis_url, key="moved-elsewhere", serializer=serializer)
    def other(question: str) -> str:
        calls.append(f"other {question}")
        return f"other answer to {question}"

    client = redis.Redis.from_url(redis_url)
    ask("a")
    (key_a,) = cache_keys(client)
    ask("b")
    (key_b,) = cache_keys(client) - {key_a}
    other("a")
    (key_other,) = cache_keys(client) - {key_a, key_b}
    signed_a = client.get(key_a)
    client.set(key_b, signed_a, px=60_000)  # another prompt's key
    client.set(key_other, signed_a, px=60_000)  # another function's key
    assert ask("b") == "answer to b"
    assert other("a") == "other answer to a"
    assert calls == ["a", "b", "other a", "b", "other a"]
    assert ask("a") == "answer to a" and len(calls) == 5  # still served under its own key
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_with_a_secret_a_tampered_entry_is_a_miss(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, serializer: str
) -> None:
    use_secret(monkeypatch, SECRET)
    calls: list[str] = []

    @cached_response(backend=redis_url, key="tampered", serializer=serializer)
    def ask(question: str) -> str:
        calls.append(question)
        return "answer AAAA"

    client = redis.Redis.from_url(redis_url)
    ask("q")
    (key,) = cache_keys(client)
    raw = client.get(key)
    assert raw is not None and b"AAAA" in raw
    client.set(key, raw.replace(b"AAAA", b"BBBB"), px=60_000)
    assert ask("q") == "answer AAAA" and len(calls) == 2
    raw = client.get(key)
    assert raw is not None and raw.startswith(b"gg2s:")  # then 1 serializer byte, 8 deadline bytes
    later = raw[:6] + (int.from_bytes(raw[6:14], "big") + 10**9).to_bytes(8, "big") + raw[14:]
    client.set(key, later, px=60_000)  # the deadline pushed back: signed, so refused too
    assert ask("q") == "answer AAAA" and len(calls) == 3
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_with_a_secret_an_entry_kept_past_its_signed_deadline_is_a_miss(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, serializer: str
) -> None:
    import time

    use_secret(monkeypatch, SECRET)
    calls: list[str] = []

    @cached_response(ttl=0.3, backend=redis_url, key="replayed", serializer=serializer)
    def ask(question: str) -> str:
        calls.append(question)
        return "answer"

    client = redis.Redis.from_url(redis_url)
    ask("q")
    (key,) = cache_keys(client)
    client.persist(key)  # someone keeps (or replays) the entry past its time
    time.sleep(0.5)
    assert client.exists(key)
    ask("q")
    assert calls == ["q", "q"]
    client.close()


# -- expiry: every key the cache writes ----------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("secret", [None, SECRET])
def test_ttl_none_on_redis_still_writes_keys_that_expire(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, secret: str | None
) -> None:
    from glm_guard.backends._redis._cache import DEFAULT_MAX_TTL

    use_secret(monkeypatch, secret)
    calls: list[str] = []

    @cached_response(ttl=None, backend=redis_url, key="forever")
    def ask(question: str) -> str:
        calls.append(question)
        return "answer"

    ask("q")
    assert ask("q") == "answer" and calls == ["q"]
    client = redis.Redis.from_url(redis_url)
    ttls = [client.pttl(key) for key in client.keys("glm_guard:*")]
    assert ttls and all(0 < ttl <= DEFAULT_MAX_TTL * 1000 for ttl in ttls), ttls
    client.close()


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
