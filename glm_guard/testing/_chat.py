"""The chat-completions endpoint: routing, auth, body checks, admission and the answer.

Checks run in GLM's order (key, then body, then faults and limits) so each failure gets
the business code GLM would send, and only an admitted request holds a concurrency slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from ._answer import answer, completion, usage
from ._catalogue import error_body, error_message, error_status
from ._config import SimulatorConfig, mask_key
from ._engine import Admission, Engine, Slot
from ._http import ClientGone, HTTPRequest, send_json
from ._stream import send_stream

__all__ = ["API_PREFIX", "ChatEndpoint", "send_error"]

log = logging.getLogger("glm_guard.testing.simulator")

API_PREFIX = "/api/paas/v4"
_CHAT_PATHS = frozenset({f"{API_PREFIX}/chat/completions", "/api/coding/paas/v4/chat/completions"})


async def send_error(
    writer: asyncio.StreamWriter,
    status: int,
    code: str,
    message: str,
    *,
    keep: bool,
    extra: list[tuple[str, str]] | None = None,
    next_flush_time: int | None = None,
) -> None:
    """Answer with GLM's error envelope; a client that already left needs no answer."""
    body = error_body(code, message, next_flush_time=next_flush_time)
    with contextlib.suppress(ClientGone):
        await send_json(writer, status, body, keep=keep, extra=extra)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _check_body(raw: bytes, cfg: SimulatorConfig) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The parsed body and, if GLM would refuse it, ``(code, detail)``."""
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


class ChatEndpoint:
    """Answers requests for one simulator; ``stopping`` says whether to close after answering."""

    __slots__ = ("_engine", "_stopping")

    def __init__(self, engine: Engine, stopping: Callable[[], bool]) -> None:
        self._engine = engine
        self._stopping = stopping

    async def handle(self, req: HTTPRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer ``req``; ``True`` when the connection may serve another request."""
        keep = req.keep_alive and not self._stopping()
        if req.path not in _CHAT_PATHS:
            await send_error(writer, 404, "1222", f"API {req.path} 不存在", keep=keep)
            return keep
        if req.method != "POST":
            extra = [("Allow", "POST")]
            await send_error(writer, 405, "1212", f"当前接口不支持 {req.method} 调用方式", keep=keep, extra=extra)
            return keep
        return await self._chat(req, writer, keep)

    async def _refuse(
        self,
        writer: asyncio.StreamWriter,
        cfg: SimulatorConfig,
        code: str,
        *,
        keep: bool,
        detail: str = "",
        admission: Admission | None = None,
    ) -> bool:
        extra = [("Retry-After", f"{cfg.retry_after:g}")] if code == "1302" and cfg.retry_after is not None else []
        status = error_status(code, cfg.status_overrides)
        reset = admission.reset if admission is not None else None
        model_name = admission.model_name if admission is not None else None
        message = error_message(code, detail, reset=reset, model_name=model_name)
        flush = round(reset * 1000) if reset is not None and cfg.quota_next_flush_time else None
        await send_error(writer, status, code, message, keep=keep, extra=extra, next_flush_time=flush)
        return keep

    async def _chat(self, req: HTTPRequest, writer: asyncio.StreamWriter, keep: bool) -> bool:
        engine = self._engine
        cfg = engine.config
        engine.received()

        key = _bearer(req.headers.get("authorization"))
        if key is None or (cfg.api_keys is not None and key not in cfg.api_keys):
            code = "1001" if key is None else "1002"
            engine.reject(code, error_status(code, cfg.status_overrides), key, None, False)
            log.info("rejected %s key=%s", code, mask_key(key))
            return await self._refuse(writer, cfg, code, keep=keep)

        body, problem = _check_body(req.body, cfg)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        stream = body.get("stream") is True
        if problem is not None:
            code, detail = problem
            engine.reject(code, error_status(code, cfg.status_overrides), key, model, stream)
            return await self._refuse(writer, cfg, code, keep=keep, detail=detail)
        assert model is not None

        admission = engine.try_admit(key, model, stream)
        if admission.code is not None:
            log.info("rejected %s key=%s model=%s", admission.code, mask_key(key), model)
            return await self._refuse(writer, cfg, admission.code, keep=keep, admission=admission)

        log.debug("admitted key=%s model=%s stream=%s", mask_key(key), model, stream)
        slot = Slot(engine, key, model, admission.entry)
        try:
            if admission.latency > 0:
                await asyncio.sleep(admission.latency)
            content, finish = answer(body, cfg)
            if stream:
                fault = admission.stream_fault
                engine.stream_started()
                outcome = await send_stream(
                    writer,
                    model=model,
                    content=content,
                    finish=finish,
                    usage=usage(body, content),
                    fault=fault,
                    slot=slot,
                    chunk_delay=cfg.stream_chunk_delay,
                    keep=not self._stopping(),
                )
                dropped = outcome == "disconnected" or (fault is not None and fault.reason == "disconnect")
                return keep and not dropped and not self._stopping()
            payload = completion(body, model, content, finish)
            slot.release("completed")
            await send_json(writer, 200, payload, keep=keep and not self._stopping())
            return keep and not self._stopping()
        except ClientGone:
            return False
        finally:
            slot.release("disconnected")  # no-op unless the answer was never finished
