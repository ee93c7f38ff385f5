"""``glm-guard demo``: its figures, its output, its exit status, its options, and Redis mode."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import glm_guard
from glm_guard.cli import main
from glm_guard.cli._demo import add_arguments
from glm_guard.cli._demo_workload import percentile

# Small and fast: the defaults are exercised once, end to end, by the console script.
QUICK = ["--requests", "12", "--callers", "4", "--latency", "0.05", "--sleep", "0.2"]
ROWS = (
    "requests",
    "1302 errors",
    "failed calls",
    "success rate",
    "fallbacks served",
    "throughput",
    "p50 latency",
    "p99 latency",
)


def main_demo(argv: list[str]) -> int:
    return main(["demo", *argv])


def runs_of(output: str) -> dict[str, dict[str, Any]]:
    data = json.loads(output)
    return {run["name"]: run for run in data["runs"]}


def check_figures(runs: dict[str, dict[str, Any]], requests: int, limit: int = 2) -> None:
    assert list(runs) == ["unguarded", "sleep", "guarded"]
    assert {run["requests"] for run in runs.values()} == {requests}
    unguarded, guarded = runs["unguarded"], runs["guarded"]
    assert unguarded["errors_1302"] > 0
    assert unguarded["failed"] == unguarded["errors_1302"]  # each failure was a 1302
    assert unguarded["success_rate"] < 1
    assert guarded["errors_1302"] == 0
    assert guarded["failed"] == guarded["fallbacks"] == 0
    assert guarded["success_rate"] == 1
    assert guarded["peak_in_flight"] <= limit
    assert runs["sleep"]["p99_latency"] >= 0.2  # the remedy's sleep is part of every answered call
    for run in runs.values():
        assert run["p50_latency"] <= run["p99_latency"]
        assert run["throughput"] > 0


def test_json_figures_show_the_guard_removing_1302s(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_demo([*QUICK, "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    check_figures(runs_of(out), 12)
    assert json.loads(out)["config"]["concurrency"] == 2


def test_the_demo_ends_with_the_monitors_figures(capsys: pytest.CaptureFixture[str]) -> None:
    import glm_guard

    before = glm_guard.stats()["total"]  # other tests in this process count too: compare deltas
    assert main_demo([*QUICK, "--json", "--quiet"]) == 0
    monitor = json.loads(capsys.readouterr().out)["monitor"]
    assert monitor["calls"] - before["calls"] == 12  # the guarded run, as the monitor recorded it
    assert monitor["errors_1302"] == before["errors_1302"]
    assert main_demo([*QUICK, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "monitor (glm_guard.stats()" in out
    assert "1302 errors seen" in out


def test_table_on_stdout_progress_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_demo(QUICK) == 0
    out, err = capsys.readouterr()
    header = out.splitlines()[2]
    assert header.split() == ["unguarded", "sleep(0.2)", "remedy", "glm_guard"]
    for row in ROWS:
        assert any(line.startswith(row) for line in out.splitlines()), row
    assert "glm_guard: 0 of 12 calls failed, 0 1302s" in out
    assert "12/12 requests" in err  # one progress line per run when stderr is not a terminal
    assert err.count("12/12") == 3


def test_help_documents_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "glm_guard", "demo", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in parser._actions:
        for option in action.option_strings:
            assert option in done.stdout
        assert action.help, action.dest
    top = subprocess.run([sys.executable, "-m", "glm_guard", "--help"], capture_output=True, text=True, timeout=30)
    assert "demo" in top.stdout


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--requests", "0"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_redis_without_redis_url_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_demo(["--backend", "redis", "--quiet"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_unreachable_redis_fails_clearly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw@127.0.0.1:1/0")
    glm_guard.reload_settings()
    assert main_demo(["--backend", "redis", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach REDIS_URL" in err
    assert "pw" not in err


def test_redis_processes_share_one_limit(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    glm_guard.reload_settings()
    argv = [*QUICK, "--callers", "6", "--backend", "redis", "--processes", "3", "--json", "--quiet"]
    assert main_demo(argv) == 0
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert data["config"]["processes"] == 3
    assert "s3cret" not in out  # the Redis password is masked
    check_figures(runs_of(out), 12)


def test_percentile_is_a_value_some_caller_saw() -> None:
    values = [0.1 * i for i in range(1, 101)]
    assert percentile(values, 50) == values[49]
    assert percentile(values, 99) == values[98]
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def test_default_run_of_the_console_script_is_quick_and_clean() -> None:
    script = shutil.which("glm-guard", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "glm_guard"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLM_API_", "GLM_GUARD_"))}
    began = time.monotonic()
    done = subprocess.run([*command, "demo", "--json"], capture_output=True, text=True, timeout=60, env=env)
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert elapsed < 60
    check_figures(runs_of(done.stdout), 40)  # stdout is JSON only; progress went to stderr
    assert "40/40" in done.stderr


def test_redis_workers_calls_reach_the_monitor_and_the_stats_command_redis(redis_url: str) -> None:
    """Defect 6: the guarded run's calls, made in worker processes, are counted in Redis."""
    env = {**os.environ, "REDIS_URL": redis_url}
    argv = [*QUICK, "--backend", "redis", "--processes", "2", "--json", "--quiet"]
    demo = subprocess.run(
        [sys.executable, "-m", "glm_guard", "demo", *argv], capture_output=True, text=True, timeout=60, env=env
    )
    assert demo.returncode == 0, demo.stderr
    monitor = json.loads(demo.stdout)["monitor"]
    assert monitor["calls"] == monitor["successes"] == 12  # every guarded call, from both workers
    assert monitor["attempts"] >= 12
    stats = subprocess.run(
        [sys.executable, "-m", "glm_guard", "stats", "--json"], capture_output=True, text=True, timeout=30, env=env
    )
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["source"] == "redis"
    assert data["keys"]["glm:glm-4"]["calls"] == 12


def test_the_peak_hour_scenario_compares_fixed_limits_with_a_learned_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Capacity 3 -> 1 -> 3 for 2 s each, 8 backlogged callers."""
    argv = ["--scenario", "peak-hour", "--high", "3", "--low", "1", "--phase", "2", "--callers", "8"]
    assert main_demo([*argv, "--latency", "0.05", "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    high, low, auto = json.loads(out)["runs"]
    assert low["errors_1302"] == 0  # never above the capacity, but it wastes the high phases
    assert high["errors_1302"] > 0  # above the capacity all through the peak
    assert auto["failed"] == 0
    assert auto["answered"] > low["answered"]
    for run in (high, low, auto):
        assert run["requests"] == run["answered"] + run["errors_1302"]  # every request answered or refused


def test_the_peak_hour_scenario_needs_a_lower_peak(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_demo(["--scenario", "peak-hour", "--high", "2", "--low", "2", "--quiet"]) == 2
    assert "--low" in capsys.readouterr().err
