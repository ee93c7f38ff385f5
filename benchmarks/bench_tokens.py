"""Token budgets across processes: glm_guard beside litellm's router and two baselines.

100 callers (8 processes x 12-13 asyncio tasks) share one budget of tokens per period and call
``glm_guard.testing``'s provider simulator (OpenAI style, on 127.0.0.1) over HTTP.  Each call
sends a prompt of random size and ``max_tokens``; the answer is shorter than ``max_tokens``,
so every call uses less than its estimate (prompt + ``max_tokens``): estimates are *honest*.

- **glm_guard**: ``rate_limited(tokens=T, period=...)`` on Redis: reserves the estimate before
  the call, settles it to the answer's ``usage`` after;
- **estimate only**: the same budget with ``refund_unused=False``: reserve the estimate, never
  settle (the OpenAI cookbook's processor and openlimit work so; here shared through Redis);
- **count after the call**: a shared Redis counter per fixed window, checked before the call and
  increased by the answer's usage after it (Envoy AI Gateway, Kong); a caller refused retries
  50 ms later;
- **litellm Router**: one deployment with ``tpm=T``, ``usage-based-routing-v2`` with pre-call
  checks and Redis, every process its own router (litellm's replicas); a refused caller retries
  50 ms later.  litellm counts per calendar minute, so its period is 60 s: it runs within one
  minute, and its utilisation is not measured.

Figures (tokens are the answer's ``usage``, counted at the call's start):

- **overshoot**: the most tokens started in any window of one period ÷ T, on the callers' clock
  (when the call began), and at the provider (when the simulator admitted the request);
- **utilisation**: tokens used during the run ÷ what T allows in it.

A second scenario counts the **429s at the provider** when it enforces the same TPM and sends
its ``x-ratelimit-*`` headers: glm_guard only, with the whole estimate kept (OpenAI counts
``max_tokens`` on arrival: ``refund_unused=False``), and with refunds, where only the headers
can hold it back (they wait for the reset once too little is left, but the calls already
admitted still arrive: that configuration draws 429s).

``python benchmarks/bench_tokens.py --out tokens.json`` (starts its own redis-server).
"""

from __future__ import annotations

import asyncio
import datetime
import math
import multiprocessing
import os
import random
import time
import urllib.parse
from pathlib import Path
from typing import Any

import bench_common as common

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch anything

PEERS = {
    "glm_guard": "glm_guard rate_limited(tokens=T), Redis",
    "estimate_only": "estimate only (reserve, never settle)",
    "count_after": "count after the call (Redis counter per window)",
    "litellm": "litellm Router, tpm=T, usage-based-routing-v2",
}
HEADER_RUNS = {
    "kept": "glm_guard, refund_unused=False (OpenAI counts max_tokens)",
    "refunded": "glm_guard, refunds (its headers alone hold back the excess)",
}
PROCESSES = 8
CALLERS = 100
BUDGET = 20_000  # T, tokens per period
PERIOD = 2.0
LITELLM_PERIOD = 60.0
MAX_TOKENS = 300
ANSWER_TOKENS = 120
LATENCY = 0.1
RETRY_SECONDS = 0.05
TOLERANCE_SECONDS = 0.01
PRELOAD = ["__main__", "asyncio", "redis", "redis.asyncio", "httpx", "glm_guard", "glm_guard.backends._redis"]


def quarter(text: str) -> int:
    """The simulator's own count of a text (a quarter token per character): an honest estimate."""
    return math.ceil(len(text) / 4)


def prompt(rng: random.Random) -> tuple[list[dict[str, str]], int]:
    """A prompt of random size and its tokens as the simulator counts them."""
    size = rng.randint(50, 450)
    return [{"role": "user", "content": "word" * size}], 3 + 4 + size


async def make_caller(job: dict[str, Any]) -> Any:
    """``(call, close)``: ``await call(messages, record)`` runs one call, retrying refusals."""
    import httpx

    base, key, peer = job["base_url"], job["key"], job["peer"]
    http = httpx.AsyncClient(
        base_url=base,
        headers={"authorization": "Bearer sk-bench"},
        timeout=30,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )

    async def post(messages: list[dict[str, str]], begin: list[float]) -> dict[str, Any]:
        begin.append(time.monotonic())
        answer = await http.post(
            "/chat/completions", json={"model": "m", "messages": messages, "max_tokens": MAX_TOKENS}
        )
        if answer.status_code == 429:
            job["limited"] += 1
        answer.raise_for_status()
        return {"usage": answer.json()["usage"], "headers": answer.headers}

    if peer in ("glm_guard", "estimate_only", "kept", "refunded"):
        import glm_guard

        @glm_guard.rate_limited(
            tokens=job["budget"],
            period=job["period"],
            key=key,
            backend=job["redis_url"],
            tokenizer=quarter,
            refund_unused=peer not in ("estimate_only", "kept"),
        )
        async def guarded(*, messages: list[dict[str, str]], max_tokens: int, begin: list[float]) -> dict[str, Any]:
            return await post(messages, begin)

        async def call(messages: list[dict[str, str]], begin: list[float]) -> dict[str, Any]:
            while True:
                try:
                    return await guarded(messages=messages, max_tokens=MAX_TOKENS, begin=begin)
                except httpx.HTTPStatusError:  # a 429 (scenario 2): counted, and asked again
                    begin.clear()

        return call, http.aclose

    if peer == "count_after":
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(job["redis_url"])

        async def counted(messages: list[dict[str, str]], begin: list[float]) -> dict[str, Any]:
            while True:
                window = f"{key}:{int(time.time() // job['period'])}"
                if int(await client.get(window) or 0) < job["budget"]:
                    break
                await asyncio.sleep(RETRY_SECONDS)
            answer = await post(messages, begin)
            window = f"{key}:{int(time.time() // job['period'])}"  # counted when the answer is in
            await client.incrby(window, answer["usage"]["total_tokens"])
            await client.expire(window, int(job["period"] * 3) + 1)
            return answer

        async def close() -> None:
            await http.aclose()
            await client.aclose()

        return counted, close

    import logging
    import warnings

    import litellm

    litellm.suppress_debug_info = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):  # each refusal is logged otherwise
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # its coroutines cut off by the run's end
    address = urllib.parse.urlsplit(job["redis_url"])
    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/bench",
                    "api_base": base,
                    "api_key": "sk-bench",
                    "tpm": job["budget"],
                },
                "tpm": job["budget"],
            }
        ],
        routing_strategy="usage-based-routing-v2",
        enable_pre_call_checks=True,
        redis_host=address.hostname,
        redis_port=address.port,
        num_retries=0,
    )

    async def routed(messages: list[dict[str, str]], begin: list[float]) -> dict[str, Any]:
        while True:
            began = time.monotonic()
            try:
                answer = await router.acompletion(model="bench", messages=messages, max_tokens=MAX_TOKENS)
            except Exception as error:  # no deployment under its TPM: litellm's refusal
                if os.environ.get("BENCH_TOKENS_DEBUG"):
                    print(type(error).__name__, str(error)[:300], flush=True)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            begin.append(began)
            return {"usage": {"total_tokens": answer.usage.total_tokens}}

    return routed, http.aclose


def worker(job: dict[str, Any], ready: Any, go: Any, start_at: Any, results: Any) -> None:
    """One process: ``job["tasks"]`` callers calling until the run ends."""

    async def main() -> None:
        job["limited"] = 0
        call, close = await make_caller(job)
        ready.put(os.getpid())
        while not go.is_set():  # noqa: ASYNC110 - a multiprocessing.Event has no async wait
            await asyncio.sleep(0.002)
        begin = start_at.value
        end = begin + job["seconds"]
        starts: list[tuple[float, int]] = []
        rng = random.Random(os.getpid())

        async def task() -> None:
            while time.monotonic() < end:
                messages, _ = prompt(rng)
                began: list[float] = []
                answer = await call(messages, began)
                if began:
                    starts.append((began[-1], int(answer["usage"]["total_tokens"])))

        await asyncio.sleep(max(begin - time.monotonic(), 0.0))
        tasks = [asyncio.ensure_future(task()) for _ in range(job["tasks"])]
        await asyncio.sleep(max(end - time.monotonic(), 0.0))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Reported before closing: litellm's background work may keep the loop from ending.
        results.put({"starts": starts, "limited": job["limited"]})
        await close()

    asyncio.run(main())


def most_in_window(events: list[tuple[float, int]], period: float) -> int:
    """The most tokens started in any window ``(t - period, t]``."""
    ordered = sorted(events)
    best = total = left = 0
    for t, tokens in ordered:
        total += tokens
        while ordered[left][0] <= t - period:
            total -= ordered[left][1]
            left += 1
        best = max(best, total)
    return best


def timeline(events: list[tuple[float, int]], period: float, begin: float, seconds: float) -> list[int]:
    """Tokens started in the trailing ``period``, every 50 ms of the run."""
    ordered = sorted(events)
    points, t = [], begin + 0.05
    while t <= begin + seconds + 1e-9:
        points.append(sum(tokens for at, tokens in ordered if t - period < at <= t))
        t += 0.05
    return points


def run(ctx: Any, job: dict[str, Any], sim: Any) -> dict[str, Any]:
    """One run of one peer: ``PROCESSES`` workers started together; the figures of the run."""
    ready, results = ctx.Queue(), ctx.Queue()
    go, start_at = ctx.Event(), ctx.Value("d", 0.0)
    shares = [CALLERS // PROCESSES + (1 if i < CALLERS % PROCESSES else 0) for i in range(PROCESSES)]
    procs = [ctx.Process(target=worker, args=({**job, "tasks": n}, ready, go, start_at, results)) for n in shares]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    if job["period"] >= 60:  # litellm counts per calendar minute: the run stays within one
        into = datetime.datetime.now().second + datetime.datetime.now().microsecond / 1e6
        if into + job["seconds"] > 58:
            time.sleep(61 - into)
    sim.requests.clear()
    limited_before = sim.limited
    begin = time.monotonic() + 0.2
    start_at.value = begin
    go.set()
    reports = [results.get(timeout=120 + job["seconds"]) for _ in procs]
    for p in procs:
        p.join(10)
        if p.is_alive():  # reported already, stuck in its peer's shutdown
            p.terminate()
    end = begin + job["seconds"]
    period, budget = job["period"], job["budget"]
    callers = [(at, tokens) for r in reports for at, tokens in r["starts"] if begin <= at < end]
    # The simulator counted prompt + max_tokens on arrival; the answer used ANSWER_TOKENS of it.
    provider = [(at, tokens - MAX_TOKENS + ANSWER_TOKENS) for at, tokens in list(sim.requests) if begin <= at < end]
    used = sum(tokens for _, tokens in callers)
    allowed = budget * math.ceil(job["seconds"] / period - 1e-9)
    return {
        "calls": len(callers),
        "tokens": used,
        "overshoot": most_in_window(callers, period) / budget,
        "overshoot_tolerant": most_in_window(callers, period - TOLERANCE_SECONDS) / budget,
        "overshoot_at_provider": most_in_window(provider, period) / budget,
        "utilisation": None if period >= 60 else used / allowed,
        "limited_at_provider": sim.limited - limited_before,
        "timeline": timeline(callers, period, begin, job["seconds"]),
        "period": period,
        "seconds": job["seconds"],
    }


def measure(args: Any) -> dict[str, Any]:
    from glm_guard.testing import ProviderSimulator

    quick = args.quick
    seconds = 3.0 if quick else args.seconds
    litellm_seconds = 6.0 if quick else args.litellm_seconds
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    peers: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    with common.redis_url(args.redis_url) as url:
        common_job = {"redis_url": url, "budget": BUDGET}
        with ProviderSimulator("openai", latency=LATENCY, answer_tokens=ANSWER_TOKENS) as sim:
            for peer in PEERS:
                period = LITELLM_PERIOD if peer == "litellm" else PERIOD
                took = litellm_seconds if peer == "litellm" else seconds
                common.log(f"tokens: {peer}, {PROCESSES} processes, {CALLERS} callers, {took:g} s")
                job = {**common_job, "peer": peer, "key": f"bench-tokens-{peer}", "base_url": sim.base_url}
                peers[peer] = {"label": PEERS[peer], **run(ctx, {**job, "period": period, "seconds": took}, sim)}
        with ProviderSimulator(
            "openai", tpm=BUDGET, period=PERIOD, latency=LATENCY, answer_tokens=ANSWER_TOKENS
        ) as sim:
            for name in HEADER_RUNS:
                common.log(f"tokens: {name} against the provider's TPM, {seconds:g} s")
                job = {**common_job, "peer": name, "key": f"bench-tokens-headers-{name}", "base_url": sim.base_url}
                headers[name] = {
                    "label": HEADER_RUNS[name],
                    **run(ctx, {**job, "period": PERIOD, "seconds": seconds}, sim),
                }
    gg, kept = peers["glm_guard"], headers["kept"]
    targets = [
        {
            "target": "overshoot ≤ 1.00 with honest estimates (callers' clock, any window)",
            "shown": f"{gg['overshoot']:.2f} × T (windows {TOLERANCE_SECONDS * 1000:g} ms short: "
            f"{gg['overshoot_tolerant']:.2f}; at the provider {gg['overshoot_at_provider']:.2f})",
            "met": gg["overshoot"] <= 1.0,
        },
        {
            "target": "utilisation ≥ 90 %",
            "shown": f"{gg['utilisation']:.1%} of what T allows",
            "met": gg["utilisation"] >= 0.9,
        },
        {
            "target": "0 429s at the provider when headers are present",
            "shown": f"{kept['limited_at_provider']} 429s in {kept['calls']} calls "
            f"(with refunds: {headers['refunded']['limited_at_provider']})",
            "met": kept["limited_at_provider"] == 0,
        },
    ]
    return {
        "processes": PROCESSES,
        "callers": CALLERS,
        "budget": BUDGET,
        "period": PERIOD,
        "litellm_period": LITELLM_PERIOD,
        "max_tokens": MAX_TOKENS,
        "answer_tokens": ANSWER_TOKENS,
        "latency": LATENCY,
        "seconds": seconds,
        "litellm_seconds": litellm_seconds,
        "tolerance_seconds": TOLERANCE_SECONDS,
        "peers": peers,
        "headers": headers,
        "targets": targets,
    }


def render(section: dict[str, Any], out: Path) -> str:
    pyplot = common.plt()
    peers, headers = section["peers"], section["headers"]
    lines = [
        "# Token budgets across processes",
        "",
        f"{section['callers']} callers ({section['processes']} processes of asyncio tasks) share one budget of "
        f"T = {section['budget']:,} tokens per {section['period']:g} s and call the provider simulator (OpenAI "
        f"style, {section['latency'] * 1000:g} ms per answer) over HTTP, as fast as the limiter lets them, for "
        f"{section['seconds']:g} s. Each call sends a prompt of 57 to 457 tokens with max_tokens = "
        f"{section['max_tokens']}; every answer writes {section['answer_tokens']} tokens, so each call uses less "
        "than its estimate (prompt + max_tokens): the estimates are honest. Every peer runs on the same "
        "redis-server, one after the other.",
        "",
        "- **glm_guard** reserves the estimate before the call and settles it to the answer's usage after it;",
        "- **estimate only** reserves the estimate and never settles it (the OpenAI cookbook's processor, "
        "openlimit), here through glm_guard with `refund_unused=False` so that only the settling differs;",
        "- **count after the call** checks a Redis counter per fixed window before the call and adds the usage "
        "after it (Envoy AI Gateway, Kong); a refused caller retries 50 ms later;",
        "- **litellm Router** has one deployment with `tpm=T`, `usage-based-routing-v2`, pre-call checks and "
        "Redis; each process has its router, as each litellm replica does. litellm counts per calendar minute, "
        f"so its period is {section['litellm_period']:g} s and it runs {section['litellm_seconds']:g} s within one "
        "minute: its overshoot is what it let start in that minute ÷ T, and its utilisation is not measured.",
        "",
        "**Overshoot** is the most tokens (the answers' usage) started in any window of one period ÷ T: on the "
        "callers' clock (when the call began), with windows "
        f"{section['tolerance_seconds'] * 1000:g} ms short (the recording jitter), and at the provider (when the "
        "simulator admitted it). **Utilisation** is the tokens used during the run ÷ what T allows in it.",
        "",
        "## Targets (glm_guard)",
        "",
        common.targets_table(section["targets"]),
        "",
        "## All peers",
        "",
    ]

    def num(value: Any, pattern: str) -> str:
        return "–" if value is None else format(value, pattern)

    lines.append(
        common.table(
            [
                "peer",
                "calls",
                "tokens",
                "overshoot",
                "overshoot (tolerant)",
                "overshoot at the provider",
                "utilisation",
            ],
            [
                [
                    f"**{r['label']}**" if key == "glm_guard" else r["label"],
                    r["calls"],
                    f"{r['tokens']:,}",
                    num(r["overshoot"], ".2f"),
                    num(r["overshoot_tolerant"], ".2f"),
                    num(r["overshoot_at_provider"], ".2f"),
                    num(r["utilisation"], ".1%"),
                ]
                for key, r in peers.items()
            ],
            "lrrrrrr",
        )
    )
    lines += [
        "",
        "## 429s at a provider that sends its headers",
        "",
        f"The simulator enforces TPM = {section['budget']:,} per {section['period']:g} s (counting prompt + "
        "max_tokens on arrival, as OpenAI does) and sends `x-ratelimit-remaining-tokens` and "
        "`x-ratelimit-reset-tokens`; glm_guard has the same budget. A 429 is counted and the call asked again.",
        "",
        common.table(
            ["configuration", "calls", "429s at the provider", "overshoot at the provider (usage)"],
            [
                [r["label"], r["calls"], r["limited_at_provider"], num(r["overshoot_at_provider"], ".2f")]
                for r in headers.values()
            ],
            "lrrr",
        ),
        "",
        "![Tokens started in the trailing window](tokens.png)",
        "",
    ]
    fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
    for key, r in peers.items():
        xs = [0.05 * (i + 1) for i in range(len(r["timeline"]))]
        ys = [c / section["budget"] for c in r["timeline"]]
        left.plot(xs, ys, label=r["label"], linewidth=2.2 if key == "glm_guard" else 1.0)
    left.axhline(1.0, color="black", linestyle=":", linewidth=1)
    left.set_xlabel("seconds into the run")
    left.set_ylabel("tokens started in the trailing period ÷ T")
    left.set_title("Tokens in the trailing window (litellm: 60 s)")
    left.legend(fontsize=7)
    keys = list(peers)
    right.barh(range(len(keys)), [peers[k]["overshoot"] for k in keys], color="#7f8c8d", label="overshoot")
    right.barh(
        [i + 0.4 for i in range(len(keys))],
        [peers[k]["utilisation"] or 0 for k in keys],
        height=0.4,
        color="#c0392b",
        label="utilisation",
    )
    right.axvline(1.0, color="black", linestyle=":", linewidth=1)
    right.set_yticks(range(len(keys)), [peers[k]["label"] for k in keys], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("× T")
    right.set_title("Overshoot and utilisation")
    right.legend(fontsize=7)
    fig.savefig(out / "tokens.png")
    pyplot.close(fig)
    return "\n".join(lines)


def _extra(parser: Any) -> None:
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--litellm-seconds", type=float, default=20.0)


if __name__ == "__main__":
    common.part_main("tokens", measure, _extra)
