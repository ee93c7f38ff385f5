"""Packaging: the version, a light import, and the public surface."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import glm_guard


def test_version_comes_from_the_package_metadata() -> None:
    assert glm_guard.__version__ == importlib.metadata.version("glm-guard")


def test_import_pulls_in_no_optional_dependency() -> None:
    code = (
        "import sys, json, glm_guard\n"
        "print(json.dumps(sorted(m for m in ('redis', 'httpx', 'openai', 'zhipuai', 'backoff', 'cachetools',"
        " 'prometheus_client', 'asyncio') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout) == []


def test_public_surface_is_explicit_and_sorted() -> None:
    assert glm_guard.__all__ == sorted(glm_guard.__all__)
    for name in glm_guard.__all__:
        assert getattr(glm_guard, name) is not None
    for name in ("rate_limited", "retry_on_1302", "cached_response", "fallback", "GLMRateLimitException"):
        assert name in glm_guard.__all__


def test_py_typed_is_shipped() -> None:
    files = importlib.metadata.files("glm-guard") or []
    assert any(str(f).endswith("py.typed") for f in files) or (
        __import__("pathlib").Path(glm_guard.__file__).with_name("py.typed").exists()
    )


def test_event_classes_live_in_monitoring_and_old_top_level_imports_still_work() -> None:
    import glm_guard.monitoring

    for name in ("Alert", "AttemptEvent", "CacheEvent", "CallEvent", "FallbackEvent", "GuardEvent", "LimitChanged"):
        assert name in glm_guard.monitoring.__all__
        assert name not in glm_guard.__all__
        assert getattr(glm_guard, name) is getattr(glm_guard.monitoring, name)
