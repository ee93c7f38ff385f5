"""pytest plugin: a ``glm_simulator`` fixture backed by :class:`GLMSimulator`.

Off by default; enable it with ``-p glm_guard.testing.pytest_plugin`` on the command
line or ``pytest_plugins = ["glm_guard.testing.pytest_plugin"]`` in your root conftest.

Configure per test with the marker (module/class markers apply too; the closest wins
per option)::

    @pytest.mark.glm_simulator(concurrency=1, latency=0.2, retry_after=1)
    def test_limit(glm_simulator): ...

or, equivalently, by indirect parametrisation, which needs no marker registration::

    @pytest.mark.parametrize("glm_simulator", [{"concurrency": 1}], indirect=True)
    def test_limit(glm_simulator): ...

Options are the fields of :class:`~glm_guard.testing.SimulatorConfig`; the marker may
also take a ``SimulatorConfig`` positionally. An indirect param overrides marker options.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._config import SimulatorConfig
from ._simulator import GLMSimulator, run_simulator

__all__ = ["glm_simulator", "pytest_configure"]

MARKER = "glm_simulator"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker so ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(config=None, **options): configure the glm_simulator fixture "
        "(SimulatorConfig fields, e.g. concurrency=1, latency=0.2, faults={'1305': 0.5})",
    )


def _options_from(
    request: pytest.FixtureRequest,
) -> tuple[SimulatorConfig | None, dict[str, Any]]:
    base: SimulatorConfig | None = None
    options: dict[str, Any] = {}
    # iter_markers yields the closest first; apply farthest first so closer ones win.
    for mark in reversed(list(request.node.iter_markers(MARKER))):
        if mark.args:
            if len(mark.args) != 1 or not isinstance(mark.args[0], SimulatorConfig):
                raise TypeError(f"@pytest.mark.{MARKER} takes one SimulatorConfig positionally, then keywords")
            base = mark.args[0]
        options.update(mark.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, SimulatorConfig):
        base = param
    elif isinstance(param, dict):
        options.update(param)
    elif param is not None:
        raise TypeError("indirect glm_simulator params must be a dict of options or a SimulatorConfig")
    return base, options


@pytest.fixture
def glm_simulator(request: pytest.FixtureRequest) -> Iterator[GLMSimulator]:
    """A started simulator on a free 127.0.0.1 port, stopped after the test."""
    base, options = _options_from(request)
    with run_simulator(base, **options) as sim:
        yield sim
