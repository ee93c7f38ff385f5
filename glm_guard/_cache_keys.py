"""Cache keys: stable across processes, and digests, so no prompt is ever a key.

Arguments are bound to parameter names (``f(1)`` and ``f(x=1)`` are the same call), encoded
as canonical JSON and hashed with BLAKE2b.  Python's ``hash()`` is salted per process for
strings, so it cannot be used for a key that other processes must compute identically.
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
    """Builds the digest for one decorated function's calls."""

    __slots__ = (
        "_custom",
        "_defaults",
        "_memo",
        "_memo_size",
        "_name",
        "_positional",
        "_prefix",
        "_skip_first",
        "_var_positional",
    )

    def __init__(
        self, fn: Callable[..., Any], namespace: str, custom: Callable[..., object] | None, memo_size: int = 1024
    ) -> None:
        # Digests of recent calls whose arguments are plain scalars: hashing JSON costs
        # microseconds, a dict lookup a fraction of one.  The digest stays the cache key.
        self._memo: dict[tuple[Any, ...], str] = {}
        self._memo_size = memo_size
        self._name = getattr(fn, "__qualname__", repr(fn))
        self._custom = custom
        self._prefix = f"{KEY_VERSION}\x00{namespace}\x00".encode()
        params = list(inspect.signature(fn).parameters.values())
        self._skip_first = bool(params) and params[0].name in _SKIPPED_FIRST
        positional_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional = tuple(p.name for p in params if p.kind in positional_kinds)
        self._var_positional = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
        self._defaults = {
            p.name: p.default
            for p in params
            if p.default is not inspect.Parameter.empty and not (self._skip_first and p is params[0])
        }

    def __call__(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        if self._custom is not None:
            return self._digest(args, kwargs)
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
