"""The ``glm-guard`` command line: one parser, its subcommands, ``--version``, and its entry points."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from glm_guard.cli import _demo, _monitor, _simulate, _stats, main

COMMANDS = {"demo": _demo, "monitor": _monitor, "simulate": _simulate, "stats": _stats}
SUMMARIES = {
    "demo": "run one workload unguarded, with the seed's sleep remedy, and guarded; print the figures",
    "monitor": "serve the monitoring endpoints (stats, rate-limit stats, /metrics) on 127.0.0.1:8000",
    "simulate": "run the GLM simulator on 127.0.0.1 until interrupted",
    "stats": "print the recorded call numbers as a table (from Redis when REDIS_URL is set)",
}


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLM_API_", "GLM_GUARD_")) and k != "REDIS_URL"}
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)


def console_script() -> str:
    script = shutil.which("glm-guard", path=str(Path(sys.executable).parent))
    assert script is not None, "the glm-guard console script is not installed next to this Python"
    return script


def test_version_is_the_package_metadata_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"glm-guard {version('glm-guard')}"


def test_an_unknown_command_gets_usage_and_an_error_line() -> None:
    done = run([sys.executable, "-m", "glm_guard", "deploy"])
    assert done.returncode == 2
    assert done.stdout == ""
    usage, error = done.stderr.strip().splitlines()[-2:]
    assert usage.startswith("usage: glm-guard ")
    assert error.startswith("glm-guard: error: argument COMMAND: invalid choice: 'deploy'")
    for name in COMMANDS:
        assert name in error  # the choices are listed


def test_no_command_is_an_error_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    words = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for name, summary in SUMMARIES.items():
        assert f"{name} {summary}" in words
    assert "--version" in words


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help_for_every_option(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: glm-guard {name} ")
    parser = argparse.ArgumentParser()
    COMMANDS[name].add_arguments(parser)
    options = [option for action in parser._actions for option in action.option_strings]
    assert len(options) > 2  # more than -h/--help
    for action in parser._actions:
        for option in action.option_strings:
            assert option in out, option
        assert action.help, action.dest


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["monitor", "--port", "eighty"], "invalid int value"),
        (["stats", "--window-minutes", "x"], "invalid int value"),
        (["demo", "--backend", "memcached"], "invalid choice"),
        (["simulate", "--rate", "10"], "CALLS/PERIOD"),
        (["simulate", "--capacity-timeline", "4"], "argument --capacity-timeline: expected N:SECONDS"),
        (["simulate", "--latency", "lognormal:x:1"], "argument --latency: expected SECONDS"),
    ],
)
def test_a_bad_option_exits_2_naming_the_command(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"glm-guard {argv[0]}: error:" in err
    assert message in err


def test_main_returns_the_commands_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--json"]) == 0  # no REDIS_URL: this process's numbers, and a note why
    out, err = capsys.readouterr()
    assert json.loads(out)["source"] == "process"
    assert "no REDIS_URL set" in err


def test_python_dash_m_and_the_console_script_run_the_same_command() -> None:
    expected = f"glm-guard {version('glm-guard')}"
    for command in ([sys.executable, "-m", "glm_guard"], [console_script()]):
        shown = run([*command, "--version"])
        assert (shown.returncode, shown.stdout.strip()) == (0, expected), command
        stats = run([*command, "stats", "--json"])
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["source"] == "process"
        bad = run([*command, "stats", "--window-minutes", "0"])
        assert bad.returncode == 2
        assert "window_minutes" in bad.stderr
