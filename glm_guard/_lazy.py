"""Names a package exports but imports on first use, so ``import glm_guard`` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load(package: str, namespace: dict[str, Any], table: Mapping[str, str], name: str) -> object:
    """``name`` from the module ``table`` maps it to (relative to ``package``), kept in
    ``namespace`` so later lookups find it directly; :class:`AttributeError` if unknown."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, package), name)
    namespace[name] = value
    return value
