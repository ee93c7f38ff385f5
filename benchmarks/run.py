"""Every glm_guard benchmark in one command: ``python3 benchmarks/run.py``.

1. Creates (or reuses) ``benchmarks/.venv`` and installs glm_guard (editable, with the redis
   extra) and the peers it is compared with there, and only there: they never become
   dependencies of glm_guard.
2. Runs each part (a ``bench_*.py`` module) in its own process; a part that needs Redis starts
   its own ``redis-server`` on a free loopback port and stops it when done.
3. Writes ``docs/benchmarks/results.json``, one Markdown page per part, the PNG plots and
   ``docs/benchmarks/index.md`` (the command, the machine, the versions, every target).

Options: ``--quick`` (short runs written to ``benchmarks/.quick/``, to check the harness),
``--only overhead,redis`` (re-run some parts, keep the others' results), ``--render``
(rewrite the pages and plots from ``results.json`` without measuring).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv"
DOCS_OUT = ROOT / "docs" / "benchmarks"
QUICK_OUT = BENCH / ".quick"
COMMAND = "python3 benchmarks/run.py"

#: The peers glm_guard is compared with, installed into benchmarks/.venv only.
PEERS = [
    "aiolimiter>=1.2",
    "tenacity>=9",
    "backoff>=2.2",
    "cachetools>=5.3",
    "limits[redis]>=5",
    "pyrate-limiter>=3.7",
    "matplotlib>=3.8",
    "redis>=5",
    "httpx>=0.27",
    "openai>=1.40",
    "zai-sdk>=0.2.3",
    "litellm>=1.60",
]
VERSIONS = [
    "glm-guard",
    "aiolimiter",
    "tenacity",
    "backoff",
    "cachetools",
    "limits",
    "pyrate-limiter",
    "redis",
    "httpx",
    "openai",
    "zai-sdk",
    "litellm",
]
#: (name in results.json, module, page written from it, title)
PARTS = [
    ("overhead", "bench_overhead", "per_call.md", "Per-call overhead (one process)"),
    ("redis", "bench_redis_peers", "redis_peers.md", "Redis: one admission, one connection"),
    ("accuracy", "bench_accuracy", "accuracy.md", "Accuracy across processes"),
    ("end_to_end", "bench_end_to_end", "end_to_end.md", "End to end against the GLM simulator"),
    ("http", "bench_http", "http.md", "The guarded transport beside a bare httpx client"),
    ("scaling", "bench_scaling", "scaling.md", "How the cost grows"),
    ("monitoring", "bench_monitoring", "monitoring.md", "Monitoring: unguarded, then guarded"),
    ("adaptive", "bench_adaptive", "adaptive.md", "Adaptive concurrency while the capacity moves"),
    ("tokens", "bench_tokens", "tokens.md", "Token budgets across processes"),
]


# -- the environment -------------------------------------------------------------------------


def _in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _ensure_redis_server() -> None:
    if shutil.which("redis-server"):
        return
    if shutil.which("apt-get") is None:
        sys.exit("redis-server is not installed; install it (Debian: apt-get install redis-server) and re-run")
    print("installing redis-server (Debian package)...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, stdout=subprocess.DEVNULL
    )


def bootstrap(argv: list[str]) -> None:
    """Create and fill benchmarks/.venv when needed, then re-run this script inside it."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    wanted = hashlib.sha256(("\n".join(PEERS) + (ROOT / "pyproject.toml").read_text()).encode()).hexdigest()
    stamp = VENV / ".glm-guard-bench-installed"
    if not stamp.exists() or stamp.read_text() != wanted:
        print("installing glm_guard and the peers into benchmarks/.venv ...", file=sys.stderr)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-e", f"{ROOT}[redis]", *PEERS], check=True)
        stamp.write_text(wanted)
    _ensure_redis_server()
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])


# -- measuring -------------------------------------------------------------------------------


def run_part(module: str, quick: bool, out: Path) -> dict[str, Any]:
    command = [sys.executable, str(BENCH / f"{module}.py"), "--out", str(out)]
    if quick:
        command.append("--quick")
    began = time.monotonic()
    done = subprocess.run(command, cwd=BENCH, check=False)
    if done.returncode != 0:
        return {
            "error": f"{module}.py exited with {done.returncode}",
            "part_seconds": round(time.monotonic() - began, 1),
        }
    return json.loads(out.read_text())


def describe() -> dict[str, Any]:
    import bench_common as common

    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout.split()
    redis_version = next((p[2:] for p in server if p.startswith("v=")), "unknown")
    return {
        "command": COMMAND,
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": common.machine(),
        "versions": {**common.versions(VERSIONS), "redis-server": redis_version},
        "glm_guard_revision": common.git_revision(),
    }


# -- the pages -------------------------------------------------------------------------------


def _footer(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    return (
        f"\n---\n\nGenerated by `{meta['command']}` on {meta['generated']} (glm_guard {meta['glm_guard_revision']}); "
        f"{m['cpu'] or 'unknown CPU'}, {m['cores']} cores, Python {m['python']}. "
        "Raw figures: [results.json](results.json); all parts: [Benchmarks](index.md).\n"
    )


def render(results: dict[str, Any], out: Path) -> None:
    sys.path.insert(0, str(BENCH))
    import importlib

    meta = results["meta"]
    for name, module, page, title in PARTS:
        section = results["parts"].get(name)
        if section is None:
            continue
        if "error" in section:
            text = f"# {title}\n\nThis part failed in the last run: {section['error']}.\n"
        else:
            text = importlib.import_module(module).render(section, out)
        (out / page).write_text(text.rstrip() + "\n" + _footer(meta))
    (out / "index.md").write_text(index_page(results, out))


def _targets(results: dict[str, Any]) -> list[list[str]]:
    """One row per target of every part: where, what, measured, limit, verdict."""
    import bench_common as common

    rows: list[list[str]] = []
    parts = results["parts"]
    overhead = parts.get("overhead", {})
    for kind in ("async", "sync"):
        for t in overhead.get(kind, {}).get("targets", []):
            rows.append(
                [
                    f"[per call, {kind}](per_call.md)",
                    t["target"],
                    f"{t['measured']:.2f} {t['unit']} (p25–p75 {t['p25']:.2f}–{t['p75']:.2f})",
                    common.verdict(t["met"]),
                ]
            )
    for t in parts.get("redis", {}).get("targets", []):
        rows.append(
            [
                "[Redis, one connection](redis_peers.md)",
                t["target"],
                f"{t['measured']:.2f} {t['unit']}",
                common.verdict(t["met"]),
            ]
        )
    for t in parts.get("accuracy", {}).get("targets", []):
        rows.append(
            [
                "[accuracy, 8 × 8](accuracy.md)",
                t["target"],
                t["shown"],
                common.verdict(t["met"]),
            ]
        )
    for t in parts.get("end_to_end", {}).get("targets", []):
        rows.append(
            [
                "[end to end](end_to_end.md)",
                t["target"],
                f"{t['errors_1302']} 1302s, {t['failed']} failed, {t['fraction_of_capacity']:.1%} of capacity",
                common.verdict(t["met"]),
            ]
        )
    for t in parts.get("adaptive", {}).get("targets", []):
        rows.append(["[adaptive concurrency](adaptive.md)", t["target"], t["shown"], common.verdict(t["met"])])
    for t in parts.get("tokens", {}).get("targets", []):
        rows.append(["[token budgets, 8 processes](tokens.md)", t["target"], t["shown"], common.verdict(t["met"])])
    return rows


def index_page(results: dict[str, Any], out: Path) -> str:
    import bench_common as common

    meta = results["meta"]
    m = meta["machine"]
    versions = meta["versions"]
    targets = _targets(results)
    met = sum(1 for row in targets if "**met**" in row[-1])
    lines = [
        "# Benchmarks",
        "",
        "glm_guard measured beside the libraries people reach for instead: aiolimiter, tenacity, backoff, "
        "cachetools, `limits` and pyrate-limiter, plus the seed's own remedies. Absolute times on a shared "
        "machine are noise, so every comparison is made **side by side in one run**: cases are interleaved over "
        "repeated rounds and the pages give medians with their spread. Read the ratios, not the microseconds.",
        "",
        "## Run it",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        "One command, from the repository root, with any Python ≥ 3.11. It creates `benchmarks/.venv` (git-ignored) "
        "and installs glm_guard (editable, `[redis]` extra) and the peers **there only**; they never become "
        "dependencies of glm_guard. Each part starts its own `redis-server` on a free loopback port (installing "
        "the Debian package first if it is missing) and stops it when done; nothing else is contacted. It then "
        "rewrites this directory: `results.json`, one page per part, the PNG plots, and this page. "
        f"The last full run took {results.get('runtime_seconds', 0) / 60:.1f} minutes.",
        "",
        "- `python3 benchmarks/run.py --quick`: short runs written to `benchmarks/.quick/`, to check the harness;",
        "- `python3 benchmarks/run.py --only overhead,redis`: re-run some parts "
        f"({', '.join(f'`{p[0]}`' for p in PARTS)}), keeping the others' results;",
        "- `python3 benchmarks/run.py --render`: rewrite the pages and plots from `results.json`;",
        "- every part also runs alone: `benchmarks/.venv/bin/python benchmarks/bench_overhead.py --out x.json`.",
        "",
        "## Machine and versions",
        "",
        common.table(
            ["", ""],
            [
                ["generated", meta["generated"]],
                ["glm_guard", f"{versions.get('glm-guard')} at {meta['glm_guard_revision']}"],
                ["machine", m["platform"]],
                ["CPU", f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB"],
                ["Python", f"{m['implementation']} {m['python']}"],
                ["redis-server", versions.get("redis-server", "")],
                ["peers", ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("glm-guard", "redis-server"))],
            ],
            "ll",
        ),
        "",
        f"## Targets: {met} of {len(targets)} met",
        "",
        common.table(["where", "target", "measured", "verdict"], targets, "llll"),
        "",
        "## The parts",
        "",
    ]
    for name, _module, page, title in PARTS:
        section = results["parts"].get(name)
        if section is None:  # never run here: no page to link to
            continue
        took = section.get("part_seconds")
        lines.append(f"- [{title}]({page})" + (f" ({took:g} s)" if took is not None else ""))
    lines += [
        "",
        "## How to read them",
        "",
        "- **Overhead** is time per call minus the bare function's time per call in the same round; "
        "**× bare** divides instead. A ratio between two cases is taken round by round, then the median.",
        "- **Round trips** are counted on the client: every request redis-py writes to its socket (one per "
        "command, one per pipeline), background threads included. **Server commands** come from "
        "`INFO commandstats`, commands run inside Lua scripts included.",
        "- **Overshoot** is the most starts in any window of one period divided by the limit; starts are "
        "recorded by the callers, so the accuracy page also gives it for windows 10 ms short of the period, "
        "which absorbs the recording jitter.",
        "- Where a target is missed the page says so and gives the numbers as measured; the per-call page "
        "ends with a profile of the glm_guard cases.",
        "",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, written to benchmarks/.quick/")
    parser.add_argument("--only", help="comma-separated parts to run: " + ", ".join(p[0] for p in PARTS))
    parser.add_argument("--render", action="store_true", help="only rewrite pages and plots from results.json")
    parser.add_argument("--out", type=Path, help="where to write (default: docs/benchmarks, or benchmarks/.quick)")
    parser.add_argument("--no-bootstrap", action="store_true", help="use the current interpreter as it is")
    args = parser.parse_args(argv)
    if not args.no_bootstrap and not _in_bench_venv():
        bootstrap(argv)
    sys.path.insert(0, str(BENCH))
    out = args.out or (QUICK_OUT if args.quick else DOCS_OUT)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {"parts": {}}
    if args.render:
        render(previous, out)
        print(f"rewrote the pages in {out}")
        return 0
    chosen = [p[0] for p in PARTS] if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = set(chosen) - {p[0] for p in PARTS}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    began = time.monotonic()
    results = {"meta": describe(), "parts": dict(previous.get("parts", {}))}
    failed = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, module, _page, title in PARTS:
            if name not in chosen:
                continue
            print(f"{title} ...", file=sys.stderr, flush=True)
            section = run_part(module, args.quick, Path(scratch) / f"{name}.json")
            results["parts"][name] = section
            if "error" in section:
                failed.append(name)
            print(f"  done in {section.get('part_seconds', 0):g} s", file=sys.stderr, flush=True)
    results["runtime_seconds"] = round(time.monotonic() - began, 1)
    if args.only and "runtime_seconds" in previous:
        results["runtime_seconds"] = previous["runtime_seconds"]
    results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    render(results, out)
    print(f"wrote {out} in {results['runtime_seconds'] / 60:.1f} min", file=sys.stderr)
    if failed:
        print(f"failed parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
