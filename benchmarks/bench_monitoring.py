"""What monitoring shows: the same callers against the GLM simulator, unguarded, then guarded.

Six threads each call the simulator (two calls in flight allowed) once per 0.1 s of their own:
for the first half of the run with only ``@fallback`` (the seed's services today), for the
second half through ``fallback``, ``retry_on_1302`` and ``rate_limited(concurrency=2)``.
``glm_guard.stats()`` is sampled every second; the plot is the figure of docs/monitoring.md.

``python benchmarks/bench_monitoring.py --out monitoring.json`` (``--quick``: 8 s instead of 40).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import bench_common as common

CALLERS = 6
PAUSE = 0.1  # each caller's pause between calls: a service's callers, not a load generator


def drive(seconds: float) -> dict[str, Any]:
    import httpx

    import glm_guard
    from glm_guard.testing import run_simulator

    logging.getLogger("glm_guard").setLevel(logging.ERROR)  # a fallback per 1302 would flood the terminal
    half = seconds / 2
    samples: list[dict[str, Any]] = []
    with run_simulator(concurrency=2, latency=(0.05, 0.25), seed=1) as sim:
        client = httpx.Client(base_url=sim.base_url, headers={"Authorization": "Bearer bench-key-1"}, timeout=30)

        def post(i: int) -> dict[str, Any]:
            body = {"model": "glm-4", "messages": [{"role": "user", "content": f"question {i}"}]}
            response = client.post("/chat/completions", json=body)
            response.raise_for_status()
            return dict(response.json())

        unguarded = glm_guard.fallback("busy", on=httpx.HTTPStatusError)(post)
        guarded = glm_guard.fallback("busy")(
            glm_guard.retry_on_1302(max_tries=6, base_delay=0.2, max_delay=2)(
                glm_guard.rate_limited(concurrency=2, key="glm-4 (guarded)")(post)
            )
        )
        started = time.monotonic()
        stop = threading.Event()

        def caller(n: int) -> None:
            i = n * 100_000
            while not stop.is_set():
                i += 1
                (unguarded if time.monotonic() - started < half else guarded)(i)
                time.sleep(PAUSE)

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
        for thread in threads:
            thread.start()
        while time.monotonic() - started < seconds:
            time.sleep(1.0)
            total = glm_guard.stats()["total"]
            samples.append(
                {
                    "t": time.monotonic() - started,
                    "calls": total["calls"],
                    "successes": total["successes"],
                    "errors_1302": total["errors_1302"],
                }
            )
        stop.set()
        for thread in threads:
            thread.join()
        client.close()
    return {"seconds": seconds, "half": half, "samples": samples}


def per_second(samples: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Counter increments between consecutive samples (the counters only grow)."""
    deltas: dict[str, list[int]] = {"calls": [], "successes": [], "errors_1302": []}
    previous = dict.fromkeys(deltas, 0)
    for sample in samples:
        for name in deltas:
            deltas[name].append(max(sample[name] - previous[name], 0))
            previous[name] = sample[name]
    return deltas


def halves(section: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Calls, successes and 1302s in each half of the run."""
    deltas = per_second(section["samples"])
    found = {"unguarded": dict.fromkeys(deltas, 0), "guarded": dict.fromkeys(deltas, 0)}
    for i, sample in enumerate(section["samples"]):
        side = "unguarded" if sample["t"] <= section["half"] + 0.5 else "guarded"
        for name, values in deltas.items():
            found[side][name] += values[i]
    return found


def measure(args: Any) -> dict[str, Any]:
    seconds = 8.0 if args.quick else args.seconds
    common.log(f"monitoring: {CALLERS} callers, {seconds:g} s, unguarded then guarded")
    section = drive(seconds)
    section["halves"] = halves(section)
    return section


def render(section: dict[str, Any], out: Path) -> str:
    pyplot = common.plt()
    samples = section["samples"]
    half = section["half"]
    t = [s["t"] for s in samples]
    deltas = per_second(samples)
    rate = [s / c if c else float("nan") for s, c in zip(deltas["successes"], deltas["calls"], strict=True)]
    figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(9, 5.6), sharex=True)
    top.bar(t, deltas["errors_1302"], width=0.8, color="#c0392b", label="1302 errors per second")
    top.set_ylabel("1302 / s")
    top.axvline(half, color="grey", linestyle="--")
    top.set_ylim(0, max([*deltas["errors_1302"], 1]) * 1.3)
    top.text(half * 0.5, top.get_ylim()[1] * 0.88, "unguarded", ha="center")
    top.text(half * 1.5, top.get_ylim()[1] * 0.88, "through the guard", ha="center")
    top.legend(loc="center right")
    bottom.plot(t, rate, color="#2471a3", label="success rate")
    bottom.axhline(0.995, color="#27ae60", linestyle=":", label="alert threshold 0.995")
    bottom.axvline(half, color="grey", linestyle="--")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("success rate (per s)")
    bottom.set_xlabel(
        f"seconds ({CALLERS} callers, one call each per {PAUSE:g} s of their own; the simulator allows 2 in flight)"
    )
    bottom.legend(loc="lower right")
    figure.suptitle("glm_guard.stats() sampled each second against the GLM simulator")
    figure.tight_layout()
    figure.savefig(out / "monitoring.png")
    pyplot.close(figure)
    rows = []
    for side, counts in section["halves"].items():
        answered = counts["successes"] / counts["calls"] if counts["calls"] else float("nan")
        rows.append([side, counts["calls"], counts["errors_1302"], f"{answered:.1%}"])
    lines = [
        "# Monitoring: unguarded, then guarded",
        "",
        f"{CALLERS} callers against the GLM simulator (two calls in flight allowed), for "
        f"{section['seconds']:g} s: unguarded (only `@fallback`) for the first half, then through `fallback`, "
        "`retry_on_1302` and `rate_limited(concurrency=2)`. `glm_guard.stats()` is sampled every second.",
        "",
        common.table(["half", "calls", "1302s", "answered"], rows),
        "",
        "![1302 errors per second and the success rate, unguarded then guarded](monitoring.png)",
        "",
    ]
    return "\n".join(lines)


def _extra(parser: Any) -> None:
    parser.add_argument("--seconds", type=float, default=40.0)


if __name__ == "__main__":
    common.part_main("monitoring", measure, _extra)
