"""The ``glm-guard`` command (also ``python -m glm_guard``)."""

from __future__ import annotations

import sys

_COMMANDS = {
    "demo": "run one workload unguarded, with the seed's sleep remedy, and guarded; print the figures",
    "monitor": "serve the monitoring endpoints (stats, rate-limit stats, /metrics) on 127.0.0.1:8000",
    "simulate": "run the GLM simulator on 127.0.0.1 until interrupted",
    "stats": "print the recorded call numbers as a table (from Redis when REDIS_URL is set)",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in _COMMANDS:
        lines = ["usage: glm-guard COMMAND [options]", "", "commands:"]
        lines += [f"  {name:<10} {text}" for name, text in _COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from ._demo import main_demo

        return main_demo(rest)
    if command == "monitor":
        from .monitoring._cli import main_monitor

        return main_monitor(rest)
    if command == "simulate":
        from .testing._cli import main_simulate

        return main_simulate(rest)
    if command == "stats":
        from .monitoring._cli import main_stats

        return main_stats(rest)
    return 2  # pragma: no cover - every command is dispatched above


if __name__ == "__main__":
    raise SystemExit(main())
