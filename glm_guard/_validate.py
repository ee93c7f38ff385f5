"""Argument checks shared by the decorators, the backends and the environment; each error names the parameter."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Final

from ._errors import ConfigurationError

#: The longest duration any parameter takes (ten years).  Longer ones break in Redis, whose
#: expiries are whole milliseconds and whose Lua prints numbers past 1e14 as 1e+14.
MAX_SECONDS: Final = 10 * 365 * 86400.0

#: Bounds of the Redis backend's own durations, as (shortest, longest) seconds.
#: A socket timeout past a minute would hold every call that long while Redis hangs.
REDIS_TIMEOUT_RANGE: Final = (0.001, 60.0)
#: A concurrency lease is renewed every third of itself: shorter than 0.1 s it would spin.
LEASE_RANGE: Final = (0.1, 86400.0)
#: How long others wait for one process filling a cache entry; Redis expiries are whole ms.
FILL_LEASE_RANGE: Final = (0.001, 86400.0)

#: What a key prefix may not hold: glob characters (the release channel is subscribed to by
#: pattern, so ``*?[]`` or ``\\`` would match other applications' channels), whitespace and
#: control characters (invisible in every listing of the keys).
_GLOB: Final = frozenset("*?[]\\")
MAX_PREFIX_LENGTH: Final = 128


def positive_int(name: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(name, f"must be a positive integer, got {value!r}")
    return value


def seconds(
    name: str,
    value: object,
    *,
    optional: bool = False,
    allow_zero: bool = True,
    bounds: tuple[float, float] | None = None,
) -> float | None:
    """``value`` as seconds: finite, >= 0 (> 0 without ``allow_zero``), within ``bounds`` or ten years."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise ConfigurationError(name, f"must be a finite number of seconds, got {value!r}")
    if bounds is not None:
        low, high = bounds
        if not low <= value <= high:
            raise ConfigurationError(name, f"must be from {low:g} to {high:g} seconds, got {value!r}")
        return float(value)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(name, f"must be {bound} seconds, got {value!r}")
    if value > MAX_SECONDS:
        raise ConfigurationError(name, f"must be at most {MAX_SECONDS:.0f} seconds (ten years), got {value!r}")
    return float(value)


def known_keywords(function: str, given: Mapping[str, object], known: Collection[str]) -> None:
    """Refuse a keyword the function does not take, as Python would had it spelled each one out
    (functions that forward a group of keywords as ``**options`` take only the group's names)."""
    for name in given:
        if name not in known:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")


def key_name(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(name, f"must be a non-empty string, got {value!r}")
    return value


def key_prefix(name: str, value: object) -> str:
    """A prefix for every key in a shared store: non-empty, printable, no whitespace, no glob character."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(name, f"must be a non-empty string, got {value!r}")
    if len(value) > MAX_PREFIX_LENGTH:
        raise ConfigurationError(name, f"must be at most {MAX_PREFIX_LENGTH} characters, got {len(value)}")
    if any(char in _GLOB or char.isspace() or not char.isprintable() for char in value):
        raise ConfigurationError(
            name, f"must hold no whitespace, control character or glob character (* ? [ ] \\), got {value!r}"
        )
    return value
