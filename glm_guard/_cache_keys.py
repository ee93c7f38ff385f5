"""Cache keys: stable across processes, unambiguous across types, and digests of the arguments.

Arguments are bound to parameter names (``f(1)`` and ``f(x=1)`` are the same call), encoded
as canonical, type-tagged JSON and hashed with BLAKE2b.  Python's ``hash()`` is salted per
process for strings, so it cannot be used for a key that other processes must compute
identically.  Nothing but the digest is kept: a memo of past arguments would keep every
prompt alive in a process whose answers live in Redis.

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

#: Part of every digest and of every Redis cache key: a new key format starts afresh.
KEY_VERSION: Final = "v2"
_SKIPPED_FIRST: Final = ("self", "cls")
# Values whose equality and hash are stable and type-exact once the type is part of the
# key (1, 1.0 and True hash alike, so the types are kept alongside the values).
_MEMO_SAFE: Final = frozenset({str, int, float, bool, type(None)})
_SCALARS: Final = (str, int, bool, type(None))
#: Deeper than this is refused: a circular argument would otherwise recurse without end.
_MAX_DEPTH: Final = 100


def _tagged(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON in which only str, int, bool, None and float stand for themselves.

    Every other value becomes a JSON array whose first item names its type (``["tuple", 1,
    2]``, ``["dict", [key, value], ...]``, ``["bytes", "6869"]``).  Encoded dicts are arrays
    too, so no argument can imitate another type's encoding: two arguments share a key only
    when they are equal values of the same types.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        return 0.0 if value == 0 else value  # 0.0 == -0.0: one value, one key
    if depth >= _MAX_DEPTH:
        raise ValueError(f"nested more than {_MAX_DEPTH} levels deep, or circular")
    depth += 1
    if kind is list or kind is tuple:
        return [kind.__name__, *[item if type(item) in _SCALARS else _tagged(item, depth) for item in value]]
    if kind is dict:
        return _tagged_dict(value, depth)
    if isinstance(value, enum.Enum):  # before str and int: IntEnum and StrEnum are both
        return ["enum", _type_name(value), value.name]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [[f.name, _tagged(getattr(value, f.name), depth)] for f in dataclasses.fields(value)]
        return ["dataclass", _type_name(value), *fields]
    model_dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(model_dump) and not isinstance(value, type):
        return ["model", _type_name(value), _tagged(model_dump(mode="json"), depth)]
    return _tagged_other(value, depth)


def _tagged_dict(value: Mapping[Any, Any], depth: int) -> list[Any]:
    encoded: list[Any] = ["dict"]
    try:
        keys = sorted(value)
    except TypeError:  # keys of several types
        keys = None
    for k in keys or ():  # the usual dict, str keys only: its keys are their own order
        if type(k) is not str:
            break
        item = value[k]
        encoded.append([k, item if type(item) in _SCALARS else _tagged(item, depth)])
    else:
        if keys is not None:
            return encoded
    pairs = [[_tagged(k, depth), _tagged(v, depth)] for k, v in value.items()]
    pairs.sort(key=lambda pair: _order(pair[0]))
    return ["dict", *pairs]


def _tagged_other(value: Any, depth: int) -> Any:
    """Subclasses of the plain types (by their value), then the other types keys accept."""
    if isinstance(value, (list, tuple)):  # a namedtuple equals its tuple: one key
        return ["list" if isinstance(value, list) else "tuple", *[_tagged(item, depth) for item in value]]
    if isinstance(value, dict):
        return _tagged_dict(value, depth)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):  # numpy's float64 is one
        return _tagged(float(value))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (set, frozenset)):
        items = sorted((_tagged(item, depth) for item in value), key=_order)
        return ["set" if isinstance(value, set) else "frozenset", *items]
    if isinstance(value, (bytes, bytearray)):
        return ["bytearray" if isinstance(value, bytearray) else "bytes", bytes(value).hex()]
    import datetime  # deferred with the two below: only unusual argument types reach here
    import decimal
    import uuid

    if isinstance(value, datetime.timedelta):
        return ["timedelta", value.days, value.seconds, value.microseconds]
    for kind in (datetime.datetime, datetime.date, datetime.time):  # datetime before its base, date
        if isinstance(value, kind):
            return [kind.__name__, value.isoformat()]
    if isinstance(value, decimal.Decimal):
        return ["decimal", str(value)]
    if isinstance(value, uuid.UUID):
        return ["uuid", str(value)]
    raise TypeError(f"{type(value).__qualname__} cannot be encoded")


def _order(encoded: Any) -> tuple[int, str]:
    """A total order on encoded values: dict items and set members in one order everywhere."""
    if type(encoded) is str:
        return 0, encoded
    return 1, _text(encoded)


def _text(encoded: Any) -> str:
    return _ENCODER.encode(encoded)


# Built once: json.dumps with any non-default option builds a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _canonical(material: object) -> str:
    return _text(_tagged(material))


def _type_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


class KeyMaker:
    """Builds the key for one decorated function's calls: a digest, or in-process a tuple."""

    __slots__ = (
        "_arity",
        "_custom",
        "_defaults",
        "_keywords",
        "_name",
        "_names",
        "_pads",
        "_positional",
        "_prefix",
        "_single",
        "_skip_first",
        "_stable",
        "_var_keyword",
        "_var_positional",
        "key_of",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        namespace: str,
        custom: Callable[..., object] | None,
        *,
        stable: bool = True,
    ) -> None:
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
        # Variadic parts are keyed as "*name" and "**name", which no parameter can be called,
        # so f(1) for f(*args, **kw) and f(args=[1]) do not share a key.
        self._var_positional = next(("*" + p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), "*")
        self._var_keyword = next(("**" + p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), "**")
        keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self._keywords = frozenset(p.name for p in params if p.kind in keyword_kinds)
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
        if self._custom is not None or self._stable:
            return self._digest
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
        # surrogatepass: a lone surrogate (text decoded badly somewhere) is still a key, and
        # still one no other string shares.
        return hashlib.blake2b(self._prefix + text.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()

    def _material(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> object:
        if self._custom is not None:
            return {"key": self._custom(*args, **kwargs)}
        bound = dict(self._defaults)
        positional = self._positional
        start = 1 if self._skip_first else 0
        for index in range(start, min(len(args), len(positional))):
            bound[positional[index]] = args[index]
        if len(args) > len(positional):
            bound[self._var_positional] = args[len(positional) :]
        keywords = self._keywords
        if keywords.issuperset(kwargs):
            bound.update(kwargs)
        else:
            bound[self._var_keyword] = {name: value for name, value in kwargs.items() if name not in keywords}
            bound.update((name, value) for name, value in kwargs.items() if name in keywords)
        return bound

    def _explain(self, material: object, error: Exception) -> TypeError:
        if self._custom is not None:
            return TypeError(
                f"cached_response: the key function of {self._name} returned something that cannot be "
                f"encoded ({error}); return str, numbers, lists or dicts"
            )
        if isinstance(material, dict):
            for name, value in material.items():
                try:
                    _canonical(value)
                except (TypeError, ValueError) as reason:
                    return TypeError(
                        f"cached_response: argument {name!r} of {self._name} cannot be part of a cache key "
                        f"({reason}); pass key=... to cached_response to build the key yourself"
                    )
        return TypeError(f"cached_response: the cache key of {self._name} cannot be built: {error}")
