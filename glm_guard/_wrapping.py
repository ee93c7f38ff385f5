"""What every decorator needs to know about the callable it wraps, decided once.

Sync or async (and generator or not) is settled at decoration time so the wrapper is a
plain ``def`` or ``async def`` with no per-call branching, and the next decorator in a
stack still sees an ``async def`` as async.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any, Literal

Kind = Literal["sync", "async", "generator", "async_generator"]


def unwrap_descriptor(obj: Any) -> tuple[Callable[..., Any], Callable[[Any], Any]]:
    """Split ``classmethod``/``staticmethod`` into the function and a re-wrapper.

    Lets a decorator sit above ``@classmethod`` as well as below it.
    """
    if isinstance(obj, classmethod):
        return obj.__func__, classmethod
    if isinstance(obj, staticmethod):
        return obj.__func__, staticmethod
    if not callable(obj):
        raise TypeError(f"glm_guard decorators wrap callables, not {type(obj).__name__}")
    return obj, _identity


def _identity(obj: Any) -> Any:
    return obj


def kind_of(fn: Callable[..., Any]) -> Kind:
    if inspect.isasyncgenfunction(fn):
        return "async_generator"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    if inspect.iscoroutinefunction(fn):
        return "async"
    if not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__):
        return "async"  # an object whose __call__ is async
    return "sync"


def default_key(fn: Callable[..., Any]) -> str:
    """``module.qualname``: the same function in every process gets the same key."""
    module = getattr(fn, "__module__", None) or "<unknown>"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def watched(stream: Generator[Any, Any, Any], seen: Callable[[Any], None]) -> Generator[Any, Any, Any]:
    """``stream``'s items, each shown to ``seen`` first, with what the caller sends or throws
    passed on to ``stream`` (as ``yield from`` would), so watching a generator changes nothing."""
    try:
        chunk = next(stream)
    except StopIteration as done:
        return done.value
    while True:
        seen(chunk)
        try:
            sent = yield chunk
        except GeneratorExit:
            raise  # the caller closes: whoever opened ``stream`` closes it
        except BaseException as error:
            try:
                chunk = stream.throw(error)
            except StopIteration as done:
                return done.value
        else:
            try:
                chunk = next(stream) if sent is None else stream.send(sent)
            except StopIteration as done:
                return done.value
