"""The GLM chat-completions simulator: an asyncio HTTP server on its own thread.

It runs its own event loop in a background thread so that sync SDK clients, threads and
the caller's own asyncio loop (pytest-asyncio) can all talk to it without sharing a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, Unpack

from ._config import (
    GLM_ERRORS,
    SimulatorConfig,
    SimulatorOptions,
    StreamFailReason,
    error_status,
    mask_key,
)
from ._engine import Engine, Outcome, RequestRecord, SimulatorStats, StreamFault
from ._http import (
    LAST_CHUNK,
    BadRequest,
    HTTPRequest,
    encode_chunk,
    read_request,
    response_head,
)

__all__ = ["GLMSimulator", "run_simulator"]

log = logging.getLogger("glm_guard.testing.simulator")

API_PREFIX = "/api/paas/v4"
_CHAT_PATHS = frozenset({f"{API_PREFIX}/chat/completions", "/api/coding/paas/v4/chat/completions"})
_JSON = "application/json; charset=UTF-8"
_SERVER = "glm-guard-simulator"
_WORD = re.compile(r"\S+\s*|\s+")


@dataclass(slots=True, eq=False)
class _Conn:
    task: asyncio.Task[None]
    writer: asyncio.StreamWriter
    busy: bool = False


class _Slot:
    """An admitted request's concurrency slot, released exactly once.

    Released just *before* the last bytes go out: a client that sends its next request
    the moment it has read a response must never see a spurious 1302 (which would make
    a correct client-side limiter look broken), and counters are already final then.
    """

    __slots__ = ("_engine", "_key", "_model", "_released")

    def __init__(self, engine: Engine, key: str, model: str) -> None:
        self._engine, self._key, self._model = engine, key, model
        self._released = False

    def release(self, outcome: Outcome) -> None:
        if not self._released:
            self._released = True
            self._engine.finish(self._key, self._model, outcome)


class _ClientGone(Exception):
    """The peer closed the connection while we were writing."""


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def _tokens(text: str) -> int:
    """Cheap deterministic token estimate (~4 chars per token), as usage needs *a* number."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def default_responder(body: Mapping[str, Any]) -> str:
    """Deterministic answer: echo of the last user message plus a short digest of the request.

    Same messages and model in, same text out, so callers can check their cache.
    """
    messages = body.get("messages") or []
    last_user = ""
    for msg in reversed(messages):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            last_user = _text_of(msg.get("content"))
            break
    digest = hashlib.sha256(
        json.dumps([body.get("model"), messages], sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()[:8]
    return f"[glm-sim {digest}] You said: {last_user}"


def _pieces(content: str) -> list[str]:
    """Split an answer into word-sized SSE deltas (at least one)."""
    return _WORD.findall(content) or [""]


def _new_ids() -> tuple[str, str]:
    stamp = time.strftime("%Y%m%d%H%M%S")
    rid = f"{stamp}{uuid.uuid4().hex[:18]}"
    return rid, rid


class GLMSimulator:
    """A local stand-in for GLM's ``/api/paas/v4/chat/completions`` (OpenAI-compatible).

    Construct with a :class:`SimulatorConfig` and/or keyword options, then ``start()`` it
    (or use it as a context manager). Point an SDK at :attr:`base_url`. Behaviour can be
    changed while running with :meth:`update`, :meth:`force_next`, :meth:`set_model_fault`
    and :meth:`fail_next_streams`; all of these are thread-safe.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        /,
        **options: Unpack[SimulatorOptions],
    ) -> None:
        base = config if config is not None else SimulatorConfig()
        self._engine = Engine(base.replace(**options) if options else base)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port: int | None = None
        self._host = self._engine.config.host
        self._conns: set[_Conn] = set()
        self._stopping = False
        self._lifecycle = threading.Lock()

    # -- public properties ---------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """The live configuration (replaced atomically by :meth:`update`)."""
        return self._engine.config

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._port is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port; with ``port=0`` it is only known once started."""
        if self._port is None:
            if self.config.port:
                return self.config.port
            raise RuntimeError("simulator not started: the port is chosen at start()")
        return self._port

    @property
    def base_url(self) -> str:
        """What both SDKs take as ``base_url``; they append ``/chat/completions``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{API_PREFIX}"

    @property
    def chat_url(self) -> str:
        """Full URL of the chat-completions endpoint, for raw HTTP clients."""
        return f"{self.base_url}/chat/completions"

    @property
    def stats(self) -> SimulatorStats:
        """A consistent snapshot of the counters."""
        return self._engine.stats()

    # -- runtime control -----------------------------------------------------------

    def reset_stats(self) -> None:
        """Zero the counters, history and rate windows (in-flight requests are kept)."""
        self._engine.reset()

    def history(self) -> tuple[RequestRecord, ...]:
        """The last 10 000 decisions, oldest first; useful to time retries."""
        return self._engine.history()

    def update(self, **changes: Unpack[SimulatorOptions]) -> SimulatorConfig:
        """Change options at run time; returns the new config. ``host``/``port`` cannot change."""
        if {"host", "port"} & changes.keys() and self._port is not None:
            raise ValueError("host and port cannot change while running")
        new = self.config.replace(**changes)
        self._engine.set_config(new)
        return new

    def set_faults(self, faults: Mapping[str, float]) -> None:
        """Replace the random fault probabilities (``{"1305": 0.1}``)."""
        self.update(faults=faults)

    def set_model_fault(self, model: str, code: str | None) -> None:
        """Make every request for ``model`` get ``code`` (``None`` clears it)."""
        faults = dict(self.config.model_faults)
        if code is None:
            faults.pop(model, None)
        else:
            faults[model] = str(code)
        self.update(model_faults=faults)

    def force_next(self, code: str, count: int = 1, *, model: str | None = None) -> None:
        """The next ``count`` authenticated requests (for ``model``, or any) get ``code``.

        Takes precedence over limits and random faults; queued calls apply in order.
        ``sim.force_next("1302", 2)`` gives "fail twice, then succeed" for retry tests.
        """
        self._engine.force_next(str(code), count, model)

    def fail_next_streams(
        self,
        count: int = 1,
        *,
        after_chunks: int = 1,
        reason: StreamFailReason = "network_error",
    ) -> None:
        """The next ``count`` admitted streams break after ``after_chunks`` content chunks."""
        if after_chunks < 0:
            raise ValueError("after_chunks must be >= 0")
        self._engine.fail_next_streams(count, StreamFault(after_chunks, reason))

    def clear_faults(self) -> None:
        """Drop forced codes, per-model faults, random faults and stream failures."""
        self._engine.clear_forced()
        self.update(faults={}, model_faults={}, stream_fail_after=None)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Self:
        """Bind and serve on a background thread; returns once the port is listening."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("simulator already started")
            self._ready.clear()
            self._startup_error = None
            self._stopping = False
            self._thread = threading.Thread(target=self._thread_main, name="glm-simulator", daemon=True)
            self._thread.start()
            if not self._ready.wait(timeout):
                raise RuntimeError("simulator did not start in time")
            error = self._take_startup_error()
            if error is not None:
                self._thread.join(timeout)
                self._thread = None
                raise error
            log.debug("GLM simulator listening on %s", self.base_url)
            return self

    def _take_startup_error(self) -> BaseException | None:
        error, self._startup_error = self._startup_error, None
        return error

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), then close all.

        Idempotent. ``timeout`` defaults to ``config.stop_timeout``.
        """
        with self._lifecycle:
            thread, loop, event = self._thread, self._loop, self._stop_event
            if thread is None:
                return
            grace = self.config.stop_timeout if timeout is None else timeout
            self._grace = grace
            if loop is not None and event is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # loop already finished
                    loop.call_soon_threadsafe(event.set)
            thread.join(grace + 5.0)
            if thread.is_alive():  # pragma: no cover - only if a handler ignores cancellation
                raise RuntimeError("simulator thread did not stop")
            self._thread = None
            self._loop = None
            self._stop_event = None
            self._port = None
            log.debug("GLM simulator stopped")

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        cfg = self.config
        return f"GLMSimulator({where}, concurrency={cfg.concurrency}, keys={len(frozenset(cfg.api_keys or ()))})"

    # -- server thread ----------------------------------------------------------------

    _grace: float = 5.0

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced to start(); never escapes the thread
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:  # pragma: no cover - defensive
                log.exception("GLM simulator crashed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        cfg = self.config
        server = await asyncio.start_server(self._on_connection, cfg.host, cfg.port, backlog=1024)
        self._port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            self._stopping = True
            for conn in list(self._conns):
                if not conn.busy:
                    # Closing feeds EOF to the reader, so idle keep-alive handlers exit
                    # normally; cancelling them would trip a 3.11 asyncio logging bug.
                    conn.writer.close()
            pending = {c.task for c in self._conns}
            if pending:
                _, still = await asyncio.wait(pending, timeout=self._grace)
                for task in still:
                    task.cancel()
                if still:
                    await asyncio.wait(still, timeout=2.0)
            await server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(task, writer)
        self._conns.add(conn)
        try:
            cfg = self.config
            while not self._stopping:
                try:
                    async with asyncio.timeout(cfg.idle_timeout):
                        req = await read_request(reader, writer, cfg.max_body_bytes)
                except TimeoutError:
                    break
                except BadRequest as exc:
                    await self._send_error_raw(writer, exc.status, "1210", exc.reason, keep=False)
                    break
                if req is None:
                    break
                conn.busy = True
                try:
                    keep = await self._dispatch(req, writer)
                finally:
                    conn.busy = False
                if not keep:
                    break
                cfg = self.config
        except (_ClientGone, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels us (grace period over). Finishing normally keeps
            # asyncio's client_connected_cb callback from logging a bogus error.
            pass
        except Exception:  # a simulator bug must not kill the server or leak the socket
            log.exception("GLM simulator handler failed")
            await self._send_error_raw(writer, 500, "500", GLM_ERRORS["500"][1], keep=False)
        finally:
            self._conns.discard(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- request handling ------------------------------------------------------------

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():
            raise _ClientGone
        writer.write(data)
        try:
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise _ClientGone from exc

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Mapping[str, Any],
        *,
        keep: bool,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [
            ("Content-Type", _JSON),
            ("Content-Length", str(len(body))),
            ("Connection", "keep-alive" if keep else "close"),
            ("Server", _SERVER),
            ("x-log-id", uuid.uuid4().hex),
            *(extra or []),
        ]
        await self._write(writer, response_head(status, headers) + body)

    async def _send_error_raw(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        code: str,
        message: str,
        *,
        keep: bool,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        payload = {"error": {"code": code, "message": message}}
        with contextlib.suppress(_ClientGone):
            await self._send_json(writer, status, payload, keep=keep, extra=extra)

    async def _send_error(
        self,
        writer: asyncio.StreamWriter,
        cfg: SimulatorConfig,
        code: str,
        *,
        keep: bool,
        detail: str = "",
    ) -> bool:
        status = error_status(code, cfg.status_overrides)
        message = GLM_ERRORS[code][1]
        if "{reset}" in message:
            reset = (datetime.now() + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
            message = message.format(reset=reset)
        if detail:
            message = f"{detail}{message}"
        extra: list[tuple[str, str]] = []
        if code == "1302" and cfg.retry_after is not None:
            extra.append(("Retry-After", f"{cfg.retry_after:g}"))
        await self._send_error_raw(writer, status, code, message, keep=keep, extra=extra)
        return keep

    async def _dispatch(self, req: HTTPRequest, writer: asyncio.StreamWriter) -> bool:
        keep = req.keep_alive and not self._stopping
        if req.path not in _CHAT_PATHS:
            await self._send_error_raw(writer, 404, "1222", f"API {req.path} 不存在", keep=keep)
            return keep
        if req.method != "POST":
            await self._send_error_raw(
                writer,
                405,
                "1212",
                f"当前接口不支持 {req.method} 调用方式",
                keep=keep,
                extra=[("Allow", "POST")],
            )
            return keep
        return await self._chat(req, writer, keep)

    async def _chat(self, req: HTTPRequest, writer: asyncio.StreamWriter, keep: bool) -> bool:
        engine = self._engine
        cfg = engine.config
        engine.received()

        key = _bearer(req.headers.get("authorization"))
        if key is None or (cfg.api_keys is not None and key not in cfg.api_keys):
            code = "1001" if key is None else "1002"
            engine.reject(code, error_status(code, cfg.status_overrides), key, None, False)
            log.info("rejected %s key=%s", code, mask_key(key))
            return await self._send_error(writer, cfg, code, keep=keep)

        body, problem = self._parse_body(req.body, cfg)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        stream = body.get("stream") is True
        if problem is not None:
            code, detail = problem
            engine.reject(code, error_status(code, cfg.status_overrides), key, model, stream)
            return await self._send_error(writer, cfg, code, keep=keep, detail=detail)
        assert model is not None

        admission = engine.try_admit(key, model, stream)
        if admission.code is not None:
            log.info("rejected %s key=%s model=%s", admission.code, mask_key(key), model)
            return await self._send_error(writer, cfg, admission.code, keep=keep)

        log.debug("admitted key=%s model=%s stream=%s", mask_key(key), model, stream)
        slot = _Slot(engine, key, model)
        try:
            if admission.latency > 0:
                await asyncio.sleep(admission.latency)
            content, finish = self._answer(body, cfg)
            usage = self._usage(body, content)
            if stream:
                fault = admission.stream_fault
                outcome = await self._stream(writer, cfg, model, content, finish, usage, fault, slot)
                dropped = outcome == "disconnected" or (fault is not None and fault.reason == "disconnect")
                return keep and not dropped and not self._stopping
            cid, request_id = _new_ids()
            payload = {
                "id": cid,
                "request_id": str(body.get("request_id") or request_id),
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
            slot.release("completed")
            await self._send_json(writer, 200, payload, keep=keep and not self._stopping)
            return keep and not self._stopping
        except _ClientGone:
            return False
        finally:
            slot.release("disconnected")  # no-op unless the answer was never finished

    @staticmethod
    def _parse_body(raw: bytes, cfg: SimulatorConfig) -> tuple[dict[str, Any], tuple[str, str] | None]:
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            return {}, ("1210", "")
        if not isinstance(body, dict):
            return {}, ("1210", "")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return body, ("1214", "model ")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return body, ("1214", "messages ")
        if cfg.models is not None and model not in cfg.models:
            return body, ("1211", "")
        return body, None

    @staticmethod
    def _answer(body: Mapping[str, Any], cfg: SimulatorConfig) -> tuple[str, str]:
        content = (cfg.responder or default_responder)(body)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < _tokens(content):
            return content[: max_tokens * 4], "length"
        return content, "stop"

    @staticmethod
    def _usage(body: Mapping[str, Any], content: str) -> dict[str, Any]:
        prompt = "".join(_text_of(m.get("content")) for m in body.get("messages", []) if isinstance(m, Mapping))
        p, c = _tokens(prompt), _tokens(content)
        return {
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        cfg: SimulatorConfig,
        model: str,
        content: str,
        finish: str,
        usage: dict[str, Any],
        fault: StreamFault | None,
        slot: _Slot,
    ) -> Outcome:
        """Send the answer as SSE; GLM reports mid-stream failure in ``finish_reason`` only."""
        cid, _ = _new_ids()
        created = int(time.time())
        head = response_head(
            200,
            [
                ("Content-Type", "text/event-stream;charset=UTF-8"),
                ("Transfer-Encoding", "chunked"),
                ("Cache-Control", "no-cache"),
                ("Connection", "keep-alive" if not self._stopping else "close"),
                ("Server", _SERVER),
                ("x-log-id", uuid.uuid4().hex),
            ],
        )
        self._engine.stream_started()

        def event(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            if finish_reason is not None:
                choice["finish_reason"] = finish_reason
            chunk = {
                "id": cid,
                "created": created,
                "model": model,
                "choices": [choice],
                **extra,
            }
            line = "data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")) + "\n\n"
            return encode_chunk(line.encode())

        done = encode_chunk(b"data: [DONE]\n\n") + LAST_CHUNK
        try:
            await self._write(writer, head)
            sent: list[str] = []
            for piece in _pieces(content):
                if fault is not None and len(sent) >= fault.after_chunks:
                    break
                await self._write(writer, event({"role": "assistant", "content": piece}))
                sent.append(piece)
                if cfg.stream_chunk_delay:
                    await asyncio.sleep(cfg.stream_chunk_delay)
            if fault is not None:
                slot.release("stream_failed")
                if fault.reason == "disconnect":
                    writer.transport.abort()
                    return "stream_failed"
                partial = dict(usage)
                partial["completion_tokens"] = _tokens("".join(sent))
                partial["total_tokens"] = partial["prompt_tokens"] + partial["completion_tokens"]
                last = event({"role": "assistant", "content": ""}, fault.reason, usage=partial)
                await self._write(writer, last + done)
                return "stream_failed"
            last = event({"role": "assistant", "content": ""}, finish, usage=usage)
            slot.release("completed")
            await self._write(writer, last + done)
            return "completed"
        except _ClientGone:
            return "disconnected"


@contextlib.contextmanager
def run_simulator(
    config: SimulatorConfig | None = None, /, **options: Unpack[SimulatorOptions]
) -> Iterator[GLMSimulator]:
    """Start a :class:`GLMSimulator` for the duration of a ``with`` block.

    >>> with run_simulator(concurrency=1) as sim:  # doctest: +SKIP
    ...     client = openai.OpenAI(api_key="k", base_url=sim.base_url, max_retries=0)
    """
    sim = GLMSimulator(config, **options)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
