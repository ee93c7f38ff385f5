"""The ``glm-guard`` command (also ``python -m glm_guard``): one parser, one module per subcommand.

Each subcommand's module adds its own subparser (``register``) and holds the function that
runs it, which the parser stores as the ``run`` default; ``main`` only parses and calls it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from importlib.metadata import version

from . import _demo, _monitor, _simulate, _stats

__all__ = ["build_parser", "main"]

_COMMANDS = (_demo, _monitor, _simulate, _stats)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-guard",
        description="glm_guard's command line: a demo, the GLM simulator, and the monitoring numbers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('glm-guard')}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) names; returns its exit status.

    Bad options, ``--help`` and ``--version`` end in argparse's ``SystemExit`` (status 2, 0, 0).
    """
    options = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = options.run
    return run(options)
