"""Per-request overhead of ``glm_guard.http``'s transport beside a bare httpx client, on loopback.

A small HTTP server in a process of its own answers every POST at once with a fixed
chat-completion body (keep-alive, so no connection is opened while timing).  Each round times
every case once, in a shuffled order, sequential requests over one connection; a case's
overhead in a round is its time per request minus the bare client's in that same round, so
drift on a shared machine hits all of them alike.  The tables give the median over rounds and
the quartiles.

``python benchmarks/bench_http.py --out http.json`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import bench_common as common
import httpx

BIG = 10**6  # calls per window: never binds, so admission is measured, not waiting
BODY = json.dumps(
    {
        "id": "bench",
        "object": "chat.completion",
        "created": 0,
        "model": "glm-4",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "2"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
REQUEST = {"model": "glm-4", "messages": [{"role": "user", "content": "1+1 等于几?"}], "max_tokens": 16}


def _serve(port: Any, ready: Any) -> None:
    """A keep-alive HTTP/1.1 server that answers every request with BODY."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BODY)).encode()
            + b"\r\n\r\n"
            + BODY
        )
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(head)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(handle, sock=sock)
        port.value = sock.getsockname()[1]
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _cases(kind: str, url: str, redis_url: str) -> dict[str, tuple[str, Any]]:
    import glm_guard.http

    guard: dict[str, Any] = {"calls": BIG, "period": 60, "concurrency": 64, "key": "bench-http"}
    if kind == "sync":
        return {
            "bare": ("bare httpx.Client", httpx.Client()),
            "local": ("glm_guard.http.client(), local backend", glm_guard.http.client(**guard, backend="local")),
            "redis": ("glm_guard.http.client(), Redis backend", glm_guard.http.client(**guard, backend=redis_url)),
        }
    return {
        "bare": ("bare httpx.AsyncClient", httpx.AsyncClient()),
        "local": (
            "glm_guard.http.async_client(), local backend",
            glm_guard.http.async_client(**guard, backend="local"),
        ),
        "redis": (
            "glm_guard.http.async_client(), Redis backend",
            glm_guard.http.async_client(**guard, backend=redis_url),
        ),
    }


def _sample_sync(client: httpx.Client, url: str, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        client.post(url, json=REQUEST).json()
    return (time.perf_counter() - began) / n


async def _sample_async(client: httpx.AsyncClient, url: str, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        (await client.post(url, json=REQUEST)).json()
    return (time.perf_counter() - began) / n


def _summary(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2]}


def _rows(samples: dict[str, list[float]], labels: dict[str, str]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    bare = samples["bare"]
    for key, values in samples.items():
        overhead = [v - b for v, b in zip(values, bare, strict=True)]
        ratio = [v / b for v, b in zip(values, bare, strict=True)]
        rows[key] = {
            "label": labels[key],
            "per_request_us": _summary([v * 1e6 for v in values]),
            "overhead_us": _summary([o * 1e6 for o in overhead]),
            "ratio_to_bare": _summary(ratio),
        }
    return rows


def _measure_kind(kind: str, url: str, redis_url: str, rounds: int, n: int) -> dict[str, Any]:
    cases = _cases(kind, url, redis_url)
    samples: dict[str, list[float]] = {key: [] for key in cases}
    order = list(cases)

    async def run_async() -> None:
        for _label, client in cases.values():
            await _sample_async(client, url, 20)  # connect, warm the guard's key
        for _ in range(rounds):
            random.shuffle(order)
            for key in order:
                samples[key].append(await _sample_async(cases[key][1], url, n))
        for _label, client in cases.values():
            await client.aclose()

    if kind == "async":
        asyncio.run(run_async())
    else:
        for _label, client in cases.values():
            _sample_sync(client, url, 20)
        for _ in range(rounds):
            random.shuffle(order)
            for key in order:
                samples[key].append(_sample_sync(cases[key][1], url, n))
        for _label, client in cases.values():
            client.close()
    return _rows(samples, {key: label for key, (label, _client) in cases.items()})


def measure(args: Any) -> dict[str, Any]:
    rounds = 5 if args.quick else args.rounds
    n = 50 if args.quick else args.requests
    ctx = multiprocessing.get_context("spawn")
    port, ready = ctx.Value("i", 0), ctx.Event()
    server = ctx.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the loopback server did not start")
        url = f"http://127.0.0.1:{port.value}/v4/chat/completions"
        with common.redis_url(args.redis_url) as redis_url:
            kinds: dict[str, Any] = {}
            for kind in ("sync", "async"):
                common.log(f"http: {kind}, {rounds} rounds of {n} requests per case")
                kinds[kind] = _measure_kind(kind, url, redis_url, rounds, n)
    finally:
        server.terminate()
        server.join(10)
    return {"rounds": rounds, "requests_per_sample": n, "kinds": kinds}


def render(section: dict[str, Any], out: Path) -> str:
    def cell(s: dict[str, float], form: str) -> str:
        return f"{form.format(s['median'])} ({form.format(s['p25'])}–{form.format(s['p75'])})"

    lines = [
        "# The guarded transport beside a bare httpx client",
        "",
        "`glm_guard.http.client()` / `async_client()` (the transport every SDK is given, and that "
        "`get_llm_client()` is built on) against the same httpx client with no guard, on loopback: "
        "a server in its own process answers each POST at once with a fixed chat completion. "
        f"{section['rounds']} rounds; in each, every case sends {section['requests_per_sample']} "
        "sequential requests over one kept-alive connection, in a shuffled order. The overhead is a "
        "case's time per request minus the bare client's in the same round: medians, quartiles in "
        "brackets. The limit never binds, so this is the cost of admission, classification and "
        "release, not of waiting. Over the network to GLM, a request takes hundreds of milliseconds.",
        "",
    ]
    for kind, rows in section["kinds"].items():
        lines += [
            f"## {kind.capitalize()}",
            "",
            common.table(
                ["client", "per request µs", "overhead µs", "× bare"],
                [
                    [
                        r["label"],
                        cell(r["per_request_us"], "{:.0f}"),
                        cell(r["overhead_us"], "{:.0f}"),
                        cell(r["ratio_to_bare"], "{:.2f}"),
                    ]
                    for r in rows.values()
                ],
                "lrrr",
            ),
            "",
        ]
    return "\n".join(lines)


def _extra(parser: Any) -> None:
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)


if __name__ == "__main__":
    common.part_main("http", measure, _extra)
