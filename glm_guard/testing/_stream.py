"""Streaming an answer as server-sent events, including GLM's way of failing mid-stream.

GLM reports a failure during inference only in ``finish_reason`` (``network_error`` or
``sensitive``), never with an error code, or the connection just drops; a planned
:class:`StreamFault` reproduces each of these.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ._answer import new_id, pieces, tokens
from ._engine import Outcome, Slot, StreamFault
from ._http import LAST_CHUNK, ClientGone, encode_chunk, origin_headers, response_head, write

__all__ = ["send_stream"]

_DONE = encode_chunk(b"data: [DONE]\n\n") + LAST_CHUNK


class _Events:
    """Encodes one stream's chunks; every chunk repeats the stream's id, time and model."""

    __slots__ = ("_created", "_id", "_model")

    def __init__(self, model: str) -> None:
        self._id, self._created, self._model = new_id(), int(time.time()), model

    def chunk(self, content: str, finish_reason: str | None = None, **extra: Any) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", "content": content}}
        if finish_reason is not None:
            choice["finish_reason"] = finish_reason
        data = {"id": self._id, "created": self._created, "model": self._model, "choices": [choice], **extra}
        line = "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"
        return encode_chunk(line.encode())


def _partial_usage(usage: dict[str, Any], sent: str) -> dict[str, Any]:
    partial = dict(usage)
    partial["completion_tokens"] = tokens(sent)
    partial["total_tokens"] = partial["prompt_tokens"] + partial["completion_tokens"]
    return partial


async def send_stream(
    writer: asyncio.StreamWriter,
    *,
    model: str,
    content: str,
    finish: str,
    usage: dict[str, Any],
    fault: StreamFault | None,
    slot: Slot,
    chunk_delay: float,
    keep: bool,
) -> Outcome:
    """Send ``content`` word by word as SSE, then ``finish`` with ``usage`` and ``[DONE]``.

    With a ``fault``, stop after ``fault.after_chunks`` chunks and end the way GLM does.
    ``slot`` is released before the last bytes go out (see :class:`Slot`).
    """
    events = _Events(model)
    head = response_head(
        200,
        [
            ("Content-Type", "text/event-stream;charset=UTF-8"),
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-cache"),
            ("Connection", "keep-alive" if keep else "close"),
            *origin_headers(),
        ],
    )
    try:
        await write(writer, head)
        sent: list[str] = []
        for piece in pieces(content):
            if fault is not None and len(sent) >= fault.after_chunks:
                break
            await write(writer, events.chunk(piece))
            sent.append(piece)
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
        if fault is not None:
            slot.release("stream_failed")
            if fault.reason == "disconnect":
                writer.transport.abort()
                return "stream_failed"
            last = events.chunk("", fault.reason, usage=_partial_usage(usage, "".join(sent)))
            await write(writer, last + _DONE)
            return "stream_failed"
        last = events.chunk("", finish, usage=usage)
        slot.release("completed")
        await write(writer, last + _DONE)
        return "completed"
    except ClientGone:
        return "disconnected"
