"""Argument checks shared by the decorators; each error names the parameter."""

from __future__ import annotations

import math

from ._errors import ConfigurationError


def positive_int(name: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(name, f"must be a positive integer, got {value!r}")
    return value


def seconds(name: str, value: object, *, optional: bool = False, allow_zero: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise ConfigurationError(name, f"must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(name, f"must be {bound} seconds, got {value!r}")
    return float(value)


def key_name(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(name, f"must be a non-empty string, got {value!r}")
    return value
