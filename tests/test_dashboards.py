"""The Grafana dashboard and the Prometheus alert rules in deploy/: valid, and over series that exist.

Every metric (and every label a selector names) in them must be in the real ``/metrics``
of a monitor over real traffic; promtool checks the rules and runs their unit tests where
Debian's ``prometheus`` package is installed (scripts/test.sh installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from glm_guard.backends._local import LocalBackend
from glm_guard.monitoring import create_app

from .monitor_traffic import real_traffic

pytestmark = pytest.mark.usefixtures("fresh_stats")

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "glm_guard.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
SELECTOR = re.compile(r"\b(glm_guard_[a-z0-9_]+)(?:\{([^}]*)\})?")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rule_exprs() -> list[str]:
    """The ``expr:`` of each rule (block scalars included), read without a YAML library."""
    exprs, current = [], None
    for line in RULES.read_text(encoding="utf-8").splitlines():
        found = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if found:
            current = [found.group(2)] if found.group(2) not in ("|", ">") else []
            exprs.append(current)
        elif current is not None and (line.startswith(" " * 10) or not line.strip()):
            current.append(line)
        else:
            current = None
    return [" ".join(part.strip() for part in expr) for expr in exprs]


def test_the_dashboard_is_grafana_json_over_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert dashboard["uid"] == "glm-guard" and len({p["id"] for p in panels}) == len(panels) >= 10
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and "glm_guard_calls_total" in variables["key"]["definition"]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all('key=~"$key"' in t["expr"] for t in panel["targets"]), panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
    titles = " ".join(p["title"] for p in panels)
    for figure in ("1302", "Success rate", "Wait", "in flight", "learned limit", "Cache hit rate", "Fallbacks"):
        assert figure in titles
    assert len(rule_exprs()) == 4


def test_every_series_the_dashboard_and_rules_read_is_in_a_real_metrics_output(traffic_backend: LocalBackend) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    real_traffic(traffic_backend)
    answer = create_app().handle("GET", "/metrics")
    assert answer.status == 200
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    used = [(name, selector) for expr in dashboard_exprs() + rule_exprs() for name, selector in SELECTOR.findall(expr)]
    assert len({name for name, _ in used}) >= 12
    for name, selector in used:
        assert name in labels, f"{name} is not in /metrics"
        named = set(re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", selector))
        assert named <= labels[name], f"{name} has no label {named - labels[name]}"
    # by (...) groupings name labels that exist too
    for expr in dashboard_exprs() + rule_exprs():
        for group in re.findall(r"by \(([^)]*)\)", expr):
            names = {name for name, _ in SELECTOR.findall(expr)}
            for label in (g.strip() for g in group.split(",")):
                assert any(label in labels[name] for name in names), (label, expr)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus package (scripts/test.sh)")
@pytest.mark.parametrize("command", [["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]])
def test_promtool_accepts_the_rules_and_they_fire_on_their_traffic(command: list[str]) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *command], capture_output=True, text=True, timeout=60, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus package (scripts/test.sh)")
def test_promtool_finds_no_problem_in_the_real_metrics(traffic_backend: LocalBackend) -> None:
    pytest.importorskip("prometheus_client")
    real_traffic(traffic_backend)
    body = create_app().handle("GET", "/metrics").body
    assert PROMTOOL is not None
    done: Any = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
