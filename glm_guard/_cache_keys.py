"""Cache keys: stable across processes, and digests, so no prompt is ever a key.

Arguments are bound to parameter names (``f(1)`` and ``f(x=1)`` are the same call), encoded
as canonical JSON and hashed with BLAKE2b.  Python's ``hash()`` is salted per process for
strings, so it cannot be used for a key that other processes must compute identically.

A store that lives in this process only needs no such stability: there, a call whose
arguments are plain scalars is keyed by the values and their types, as ``functools`` and
cachetools key theirs, which costs a tuple instead of a JSON encoding and a hash.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

KEY_VERSION: Final = "v1"
_SKIPPED_FIRST: Final = ("self", "cls")
# Values whose equality and hash are stable and type-exact once the type is part of the
# memo key (1, 1.0 and True hash alike, so the types are kept alongside the values).
_MEMO_SAFE: Final = frozenset({str, int, float, bool, type(None)})


def _encode(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return {"__enum__": type(value).__qualname__, "value": _encode(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": type(value).__qualname__, "fields": dataclasses.asdict(value)}
    model_dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(model_dump) and not isinstance(value, type):
        return {"__model__": type(value).__qualname__, "fields": model_dump(mode="json")}
    if isinstance(value, (set, frozenset)):
        items = [json.dumps(item, sort_keys=True, default=_encode) for item in value]
        return {"__set__": sorted(items)}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": bytes(value).hex()}
    import datetime  # deferred with the two below: only unusual argument types reach here
    import decimal
    import uuid

    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return {"__time__": value.isoformat()}
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return {"__str__": str(value)}
    raise TypeError(type(value).__qualname__)


def _canonical(material: object) -> str:
    return json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_encode)


class KeyMaker:
    """Builds the key for one decorated function's calls: a digest, or in-process a tuple."""

    __slots__ = (
        "_arity",
        "_custom",
        "_defaults",
        "_memo",
        "_memo_size",
        "_name",
        "_names",
        "_pads",
        "_positional",
        "_prefix",
        "_single",
        "_skip_first",
        "_stable",
        "_var_positional",
        "key_of",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        namespace: str,
        custom: Callable[..., object] | None,
        memo_size: int = 1024,
        *,
        stable: bool = True,
    ) -> None:
        # Digests of recent calls whose arguments are plain scalars: hashing JSON costs
        # microseconds, a dict lookup a fraction of one.  The digest stays the cache key.
        self._memo: dict[tuple[Any, ...], str] = {}
        self._memo_size = memo_size
        self._name = getattr(fn, "__qualname__", repr(fn))
        self._custom = custom
        self._stable = stable
        self._prefix = f"{KEY_VERSION}\x00{namespace}\x00".encode()
        params = list(inspect.signature(fn).parameters.values())
        self._skip_first = bool(params) and params[0].name in _SKIPPED_FIRST
        if self._skip_first:
            params = params[1:]
        positional_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional = tuple(p.name for p in params if p.kind in positional_kinds)
        if self._skip_first:
            self._positional = ("", *self._positional)  # args[0] is self/cls and keeps its index
        self._var_positional = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
        self._defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        # In-process keys put every named parameter's value in signature order.  With only
        # positional parameters, a call with k positional arguments is padded with the
        # defaults of the rest: _pads[k], so f(1) and f(1, b=2) get one key without binding.
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        self._names = tuple(p.name for p in params if p.kind not in variadic)
        self._single = len(params) == 1 and params[0].kind in positional_kinds
        self._arity = len(params) + self._skip_first
        self._pads: dict[int, tuple[Any, ...]] = {}
        if all(p.kind in positional_kinds for p in params):
            for count in range(len(params) + 1):
                rest = params[count:]
                if all(p.default is not inspect.Parameter.empty for p in rest):
                    self._pads[count] = tuple(p.default for p in rest)
        #: The key function itself, for a caller that looks keys up on every call.
        self.key_of = self._choose()

    def __call__(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """The key of one call: a digest ``str`` when stable, else any hashable."""
        return self.key_of(args, kwargs)

    def _choose(self) -> Callable[[tuple[Any, ...], Mapping[str, Any]], Any]:
        """The key function for this function and store, picked once."""
        if self._custom is not None:
            return self._digest
        if self._stable:
            return self._stable_key
        if not self._single:
            return self._in_process_key
        arity, general = self._arity, self._in_process_key

        def lone_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
            # One argument, the commonest shape (a prompt), keyed as functools.lru_cache keys
            # a lone str: the str itself, whose hash is cached, with no tuple to build.
            if not kwargs and len(args) == arity:
                value = args[-1]
                kind = type(value)
                if kind is str:
                    return value
                if kind in _MEMO_SAFE:
                    return value, kind
            return general(args, kwargs)

        return lone_argument

    def _stable_key(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        values = args[1:] if self._skip_first else args
        if kwargs:
            items = tuple(kwargs.items())
            types = (*map(type, values), *map(type, kwargs.values()))
        else:
            items = ()
            types = tuple(map(type, values))
        if not _MEMO_SAFE.issuperset(types):
            return self._digest(args, kwargs)
        memo_key = (values, items, types)
        digest = self._memo.get(memo_key)
        if digest is None:
            digest = self._digest(args, kwargs)
            memo = self._memo
            if len(memo) >= self._memo_size:
                memo.pop(next(iter(memo)), None)  # oldest first; a race only drops one more
            memo[memo_key] = digest
        return digest

    def _in_process_key(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Every named parameter's value in signature order, then their types; else ``(digest,)``.

        Both halves have one entry per named parameter, so one flat tuple is unambiguous; a
        function of one parameter keys a str argument by itself and other scalars as
        ``(value, type)``.  A digest comes in a 1-tuple, so no str argument can equal it.
        """
        if self._single and not kwargs and len(args) == self._arity:
            values: tuple[Any, ...] = (args[-1],)
        else:
            values = args[1:] if self._skip_first else args
            pad = None if kwargs else self._pads.get(len(values))
            if pad is None:  # keywords or a richer signature: bind by name
                bound = self._material(args, kwargs)
                if not isinstance(bound, dict) or len(bound) != len(self._names):
                    return (self._digest(args, kwargs),)  # *args, **kwargs or a missing argument
                try:
                    values = tuple([bound[name] for name in self._names])
                except KeyError:
                    return (self._digest(args, kwargs),)
            elif pad:
                values = values + pad
        types = tuple(map(type, values))
        if not _MEMO_SAFE.issuperset(types):
            return (self._digest(args, kwargs),)
        if self._single:
            return values[0] if types[0] is str else (values[0], types[0])
        return values + types

    def _digest(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        material = self._material(args, kwargs)
        try:
            text = _canonical(material)
        except (TypeError, ValueError) as error:
            raise self._explain(material, error) from None
        return hashlib.blake2b(self._prefix + text.encode(), digest_size=20).hexdigest()

    def _material(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> object:
        if self._custom is not None:
            return {"key": self._custom(*args, **kwargs)}
        bound = dict(self._defaults)
        positional = self._positional
        start = 1 if self._skip_first else 0
        for index in range(start, min(len(args), len(positional))):
            bound[positional[index]] = args[index]
        if len(args) > len(positional):
            bound[self._var_positional or "*args"] = list(args[len(positional) :])
        bound.update(kwargs)
        return bound

    def _explain(self, material: object, error: Exception) -> TypeError:
        if self._custom is not None:
            return TypeError(
                f"cached_response: the key function of {self._name} returned something that is not "
                f"JSON-serialisable ({error}); return str, numbers, lists or dicts"
            )
        if isinstance(material, dict):
            for name, value in material.items():
                try:
                    _canonical(value)
                except (TypeError, ValueError):
                    return TypeError(
                        f"cached_response: argument {name!r} of {self._name} cannot be part of a cache key "
                        f"({type(value).__qualname__} is not JSON-serialisable); pass key=... to "
                        "cached_response to build the key yourself"
                    )
        return TypeError(f"cached_response: the cache key of {self._name} cannot be built: {error}")
