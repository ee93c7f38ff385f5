"""Reading a GLM stream: server-sent event lines in, chunk dicts out.

Kept apart from the clients so the sync and async drivers share one reading of GLM's
in-band errors: an error object in a chunk, ``finish_reason="network_error"``, or a body
that ends with neither ``[DONE]`` nor a finish reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._api_errors import GLMAPIError, GLMStreamError

if TYPE_CHECKING:
    import httpx

__all__ = ["Chunk", "StreamReader"]

Chunk = dict[str, Any]


class StreamReader:
    """Turns SSE lines into chunk dicts, raising on GLM's in-band errors."""

    __slots__ = ("chars", "chunks", "done", "finished", "response")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks = 0
        self.chars = 0
        self.done = False  # [DONE] seen
        self.finished = False  # a finish_reason seen

    def feed(self, line: str) -> Chunk | None:
        if not line.startswith("data:"):
            return None  # blank separators, comments, "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise GLMAPIError(self.response.status_code, data, self.response.headers, self.response) from None
        if not isinstance(chunk, dict) or "error" in chunk:
            raise GLMAPIError(self.response.status_code, chunk, self.response.headers, self.response)
        choice = (chunk.get("choices") or [{}])[0]
        if isinstance(choice, Mapping):
            finish = choice.get("finish_reason")
            if finish == "network_error":
                raise GLMStreamError("network_error", self.chunks, self.chars)
            self.finished = self.finished or finish is not None
            delta = choice.get("delta")
            if isinstance(delta, Mapping) and isinstance(delta.get("content"), str):
                self.chars += len(delta["content"])
        self.chunks += 1
        return chunk

    def check_complete(self) -> None:
        """A body that ends with neither ``[DONE]`` nor a finish_reason was cut off."""
        if not (self.done or self.finished):
            raise self.lost(ConnectionError("the stream ended without a finish_reason or [DONE]"))

    def lost(self, error: BaseException) -> GLMStreamError:
        exc = GLMStreamError("connection_lost", self.chunks, self.chars)
        exc.__cause__ = error
        return exc
