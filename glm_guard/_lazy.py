"""Names a package exports but imports on first use, so ``import glm_guard`` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

#: Where a lazy name comes from: the module that defines it (relative to the package), or a
#: function that makes it (a value that is computed rather than imported).
Source = str | Callable[[], object]


def module_getattr(package: str, namespace: dict[str, Any], table: Mapping[str, Source]) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) that fetches a name from ``table`` on first use and
    keeps it in ``namespace``, so later lookups find it directly."""

    def __getattr__(name: str) -> object:
        source = table.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = source() if callable(source) else getattr(importlib.import_module(source, package), name)
        namespace[name] = value
        return value

    return __getattr__
