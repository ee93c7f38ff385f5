"""The ``glm-guard`` command (also ``python -m glm_guard``): one parser, one module per subcommand.

Each subcommand's module holds its options and help texts (``add_arguments``) and what it
does (``run``, returning the exit status); this module lists the commands, makes a subparser
for each, parses, and calls the chosen ``run``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from importlib.metadata import version

from . import _demo, _monitor, _simulate, _stats

__all__ = ["build_parser", "main"]

# name: (module, the line ``glm-guard --help`` shows for it)
_COMMANDS = {
    "demo": (_demo, "run one workload unguarded, with the seed's sleep remedy, and guarded; print the figures"),
    "monitor": (_monitor, "serve the monitoring endpoints (stats, rate-limit stats, /metrics) on 127.0.0.1:8000"),
    "simulate": (_simulate, "run the GLM simulator on 127.0.0.1 until interrupted"),
    "stats": (_stats, "print the recorded call numbers as a table (from Redis when REDIS_URL is set)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-guard",
        description="glm_guard's command line: a demo, the GLM simulator, and the monitoring numbers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('glm-guard')}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, (command, summary) in _COMMANDS.items():
        sub = commands.add_parser(name, help=summary)
        command.add_arguments(sub)
        # ``parser`` lets a run report options that conflict the way argparse reports a bad one.
        sub.set_defaults(run=command.run, parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) names; returns its exit status.

    Bad options, ``--help`` and ``--version`` end in argparse's ``SystemExit`` (status 2, 0, 0).
    """
    options = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = options.run
    return run(options)
