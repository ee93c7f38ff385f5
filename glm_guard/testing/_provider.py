"""A simulator of the other providers' limits: OpenAI, Azure OpenAI and Anthropic.

They limit requests *and tokens* per minute (RPM, TPM), say in every answer what is left
(``x-ratelimit-*``, ``anthropic-ratelimit-*``), and refuse with their own bodies
(``rate_limit_exceeded``, ``insufficient_quota``, Anthropic's ``rate_limit_error`` and
529 ``overloaded_error``).  Like the providers, a request's tokens count when it is admitted:
its prompt plus its ``max_tokens``.  Windows slide over ``period`` (60 s, shorter in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any, Final, Literal, Self

from ._http import BadRequest, ClientGone, HTTPRequest, read_request, send_json

__all__ = ["ProviderSimulator", "run_provider_simulator"]

Style = Literal["openai", "azure", "anthropic"]
STYLES: Final = ("openai", "azure", "anthropic")
#: The answer's length in tokens when the request sets no ``max_tokens`` (and its cap otherwise).
ANSWER_TOKENS: Final = 20


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt's size as the simulator counts it: a quarter token per character (rounded up)
    per message, plus 4 per message and 3 per request, as OpenAI's cookbook counts them."""
    total = 3
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        total += 4 + math.ceil(len(str(content or "")) / 4)
    system = body.get("system")
    if isinstance(system, str):
        total += math.ceil(len(system) / 4)
    return total


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


def _rfc3339(seconds_from_now: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Window:
    """Admitted requests of one key over the last ``period``: ``(time, tokens)``, oldest first."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.entries: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def trim(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.period:
            self.tokens -= self.entries.popleft()[1]

    def reset_in(self, now: float) -> float:
        return self.entries[0][0] + self.period - now if self.entries else 0.0


class ProviderSimulator:
    """An OpenAI-, Azure- or Anthropic-style endpoint on 127.0.0.1 with RPM and TPM limits.

    ``base_url`` is what the client takes: ``openai.OpenAI(base_url=...)``,
    ``openai.AzureOpenAI(azure_endpoint=...)``, ``anthropic.Anthropic(base_url=...)``.
    ``requests`` keeps every admitted request as ``(monotonic time, tokens counted)``, and
    ``limited`` counts the 429s it answered.  Every answer is ``answer_tokens`` long, or
    ``max_tokens`` when that is less.  ``itpm`` and ``otpm`` (Anthropic) limit input tokens (the
    prompt) and output tokens (``max_tokens``, counted at admission) per ``period`` apart;
    ``sides`` keeps each admitted request's ``(time, input, output)``.
    """

    def __init__(
        self,
        style: Style = "openai",
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        period: float = 60.0,
        latency: float = 0.0,
        answer_tokens: int = ANSWER_TOKENS,
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
        self.style: Style = style
        self.rpm, self.tpm, self.period, self.latency = rpm, tpm, period, latency
        if (itpm is not None or otpm is not None) and style != "anthropic":
            raise ValueError("itpm and otpm are Anthropic's limits: give them with style='anthropic'")
        self.itpm, self.otpm = itpm, otpm
        self.sides: list[tuple[float, int, int]] = []
        self._side_windows: dict[tuple[str, str], _Window] = {}
        self.answer_tokens = answer_tokens
        self.requests: list[tuple[float, int]] = []
        self.limited = 0
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self._overload_next = 0
        self._quota_left: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._port: int | None = None
        self._ready = threading.Event()

    # -- faults ------------------------------------------------------------------------

    def overload_next(self, count: int = 1) -> None:
        """The next ``count`` requests get 529 ``overloaded_error`` (Anthropic) or 503 (the others)."""
        with self._lock:
            self._overload_next += count

    def exhaust_quota(self, after: int = 0) -> None:
        """After ``after`` more admitted requests, answer 429 ``insufficient_quota`` (billing)."""
        with self._lock:
            self._quota_left = after

    # -- where it listens ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("provider simulator not started")
        root = f"http://127.0.0.1:{self._port}"
        return f"{root}/v1" if self.style == "openai" else root

    def most_tokens_in_window(self) -> int:
        """The most tokens admitted in any window of ``period`` (what TPM bounds)."""
        with self._lock:
            ordered = sorted(self.requests)
        best = total = low = 0
        for start, tokens in ordered:
            total += tokens
            while ordered[low][0] <= start - self.period:
                total -= ordered[low][1]
                low += 1
            best = max(best, total)
        return best

    # -- the decision ----------------------------------------------------------------------

    def _admit(self, key: str, prompt: int, output: int) -> tuple[str | None, dict[str, str], float]:
        """``(refusal kind or None, rate-limit headers, seconds until it would fit)``."""
        requested = prompt + output
        now = time.monotonic()
        with self._lock:
            if self._overload_next > 0:
                self._overload_next -= 1
                return "overloaded", {}, 0.0
            if self._quota_left is not None and self._quota_left <= 0:
                return "insufficient_quota", {}, 0.0
            window = self._windows.setdefault(key, _Window(self.period))
            window.trim(now)
            sides = {
                side: self._side_windows.setdefault((key, side), _Window(self.period)) for side in ("input", "output")
            }
            for side_window in sides.values():
                side_window.trim(now)
            refusal, wait = None, 0.0
            if self.rpm is not None and len(window.entries) + 1 > self.rpm:
                refusal, wait = "requests", window.reset_in(now)
            elif self.tpm is not None and window.tokens + requested > self.tpm:
                refusal, wait = "tokens", self._tokens_free_in(window, self.tpm, requested, now)
            elif self.itpm is not None and sides["input"].tokens + prompt > self.itpm:
                refusal, wait = "input tokens", self._tokens_free_in(sides["input"], self.itpm, prompt, now)
            elif self.otpm is not None and sides["output"].tokens + output > self.otpm:
                refusal, wait = "output tokens", self._tokens_free_in(sides["output"], self.otpm, output, now)
            if refusal is None:
                window.entries.append((now, requested))
                window.tokens += requested
                for side, tokens in (("input", prompt), ("output", output)):
                    sides[side].entries.append((now, tokens))
                    sides[side].tokens += tokens
                self.requests.append((now, requested))
                self.sides.append((now, prompt, output))
                if self._quota_left is not None:
                    self._quota_left -= 1
            else:
                self.limited += 1
            return refusal, self._headers(window, sides, now), wait

    def _tokens_free_in(self, window: _Window, limit: int, requested: int, now: float) -> float:
        excess = window.tokens + requested - limit
        for at, tokens in window.entries:
            excess -= tokens
            if excess <= 0:
                return at + self.period - now
        return self.period

    def _headers(self, window: _Window, sides: dict[str, _Window], now: float) -> dict[str, str]:
        left_requests = None if self.rpm is None else max(self.rpm - len(window.entries), 0)
        left_tokens = None if self.tpm is None else max(self.tpm - window.tokens, 0)
        reset = window.reset_in(now)
        headers: dict[str, str] = {}
        if self.style == "anthropic":
            # Without itpm/otpm, the one token limit stands for both sides, as before they were split.
            counts = [("requests", self.rpm, left_requests, reset), ("tokens", self.tpm, left_tokens, reset)]
            for side, limit in (("input", self.itpm), ("output", self.otpm)):
                if limit is not None:
                    counts.append(
                        (f"{side}-tokens", limit, max(limit - sides[side].tokens, 0), sides[side].reset_in(now))
                    )
                elif self.tpm is not None:
                    counts.append((f"{side}-tokens", self.tpm, left_tokens, reset))
            for name, limit, left, resets_in in counts:
                if limit is not None and left is not None:
                    headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
                    headers[f"anthropic-ratelimit-{name}-remaining"] = str(left)
                    headers[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(resets_in)
            return headers
        for kind, limit, left in (("requests", self.rpm, left_requests), ("tokens", self.tpm, left_tokens)):
            if limit is not None and left is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(left)
                headers[f"x-ratelimit-reset-{kind}"] = _duration(reset)
        return headers

    # -- HTTP ---------------------------------------------------------------------------------

    def _route(self, req: HTTPRequest) -> str | None:
        path = req.path
        if self.style == "openai" and path == "/v1/chat/completions":
            return req.headers.get("authorization", "").removeprefix("Bearer ").strip() or None
        if self.style == "azure" and path.startswith("/openai/deployments/") and path.endswith("/chat/completions"):
            return req.headers.get("api-key") or req.headers.get("authorization", "").removeprefix("Bearer ") or None
        if self.style == "anthropic" and path == "/v1/messages":  # the SDK's 2.x sends a bearer token
            return req.headers.get("x-api-key") or req.headers.get("authorization", "").removeprefix("Bearer ") or None
        return None

    async def _handle(self, req: HTTPRequest, writer: asyncio.StreamWriter) -> None:
        key = self._route(req)
        if key is None or req.method != "POST":
            await send_json(writer, 404, self._error("not_found", "no such endpoint or no key"), keep=req.keep_alive)
            return
        try:
            body = json.loads(req.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await send_json(writer, 400, self._error("invalid_request_error", "bad body"), keep=req.keep_alive)
            return
        prompt = prompt_tokens(body)
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        written = self.answer_tokens
        answer_tokens = min(limit, written) if isinstance(limit, int) and limit > 0 else written
        requested = prompt + (limit if isinstance(limit, int) and limit > 0 else written)
        refusal, headers, wait = self._admit(key, prompt, requested - prompt)
        extra = list(headers.items())
        if refusal is not None:
            await self._refuse(writer, refusal, requested, wait, extra, req.keep_alive)
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        payload = self._answer(body, prompt, answer_tokens)
        await send_json(writer, 200, payload, keep=req.keep_alive, extra=extra)

    def _error(self, kind: str, message: str, code: str | None = None) -> dict[str, Any]:
        if self.style == "anthropic":
            return {"type": "error", "error": {"type": kind, "message": message}}
        return {"error": {"message": message, "type": kind, "param": None, "code": code or kind}}

    async def _refuse(
        self, writer: asyncio.StreamWriter, refusal: str, requested: int, wait: float, extra: list[Any], keep: bool
    ) -> None:
        if refusal == "overloaded":
            status = 529 if self.style == "anthropic" else 503
            await send_json(writer, status, self._error("overloaded_error", "Overloaded"), keep=keep)
            return
        if refusal == "insufficient_quota":
            message = "You exceeded your current quota, please check your plan and billing details."
            await send_json(writer, 429, self._error("insufficient_quota", message), keep=keep)
            return
        limit = {"requests": self.rpm, "input tokens": self.itpm, "output tokens": self.otpm}.get(refusal, self.tpm)
        if self.style == "anthropic":
            body = self._error("rate_limit_error", f"This request would exceed the rate limit of {limit} {refusal}.")
        elif self.style == "azure":
            message = f"Requests have exceeded the {refusal} rate limit. Please retry after {math.ceil(wait)} seconds."
            body = {"error": {"code": "429", "message": message}}
        else:
            unit = "requests per min (RPM)" if refusal == "requests" else "tokens per min (TPM)"
            message = (
                f"Rate limit reached on {unit}: Limit {limit}, Requested {1 if refusal == 'requests' else requested}. "
                f"Please try again in {_duration(wait)}."
            )
            body = self._error(refusal, message, "rate_limit_exceeded")
        if self.style != "openai":  # Azure and Anthropic name the wait; OpenAI only in its headers
            extra = [*extra, ("retry-after", str(max(math.ceil(wait), 1)))]
        await send_json(writer, 429, body, keep=keep, extra=extra)

    def _answer(self, body: dict[str, Any], prompt: int, answer_tokens: int) -> dict[str, Any]:
        text = " ".join(["ok"] * answer_tokens)
        model = str(body.get("model", "model"))
        if self.style == "anthropic":
            return {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": answer_tokens},
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": answer_tokens,
                "total_tokens": prompt + answer_tokens,
            },
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await read_request(reader, writer, 1 << 20)
                if req is None:
                    break
                await self._handle(req, writer)
                if not req.keep_alive:
                    break
        except (BadRequest, ClientGone, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # the server stops: ending normally keeps asyncio from logging it
            pass
        finally:
            writer.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024)
        self._port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        async with server:
            await self._stop

    def start(self, timeout: float = 5.0) -> Self:
        """Serve on a background thread; returns once the port listens."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="provider-simulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("provider simulator did not start in time")
        return self

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_finish, stop)
        if thread is not None:
            thread.join(5.0)
        self._thread = self._loop = self._stop = None
        self._port = None
        self._ready.clear()

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _finish(stop: asyncio.Future[None]) -> None:
    if not stop.done():
        stop.set_result(None)


@contextlib.contextmanager
def run_provider_simulator(style: Style = "openai", **options: Any) -> Iterator[ProviderSimulator]:
    """A :class:`ProviderSimulator` for the duration of a ``with`` block."""
    with ProviderSimulator(style, **options) as simulator:
        yield simulator
