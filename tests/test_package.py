"""Packaging: the version, a light import, and the public surface."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

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


def test_the_wheel_and_the_sdist_ship_every_data_file(tmp_path: Path) -> None:
    """The monitor page's files and the Lua scripts are package data, read at run time: a build
    that left one out would serve a 500 at ``/`` or fail every Redis call, while these tests, on
    an editable install, read them from the source tree and pass."""
    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"
    shutil.copytree(root / "glm_guard", source / "glm_guard", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(root / name, source / name)

    def build(hook: str) -> Path:  # each hook in its own process, as build frontends run them
        code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
        out = tmp_path / "dist"
        done = subprocess.run(
            [sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return out / done.stdout.split()[-1]

    data = {
        path.relative_to(root).as_posix()
        for path in (root / "glm_guard").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    assert {"glm_guard/monitoring/static/index.html", "glm_guard/monitoring/static/monitor.js"} <= data
    with zipfile.ZipFile(build("build_wheel")) as archive:
        assert data <= set(archive.namelist())
    with tarfile.open(build("build_sdist")) as archive:
        assert data <= {name.partition("/")[2] for name in archive.getnames()}
