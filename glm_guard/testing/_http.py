"""Just enough HTTP/1.1 over asyncio streams for the SDKs: keep-alive, Content-Length or
chunked request bodies, JSON responses, and chunked responses for SSE.

Written on asyncio streams rather than ``http.server`` so hundreds of concurrent
connections cost no threads and shutdown can cancel idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = [
    "LAST_CHUNK",
    "BadRequest",
    "ClientGone",
    "HTTPRequest",
    "encode_chunk",
    "origin_headers",
    "read_request",
    "response_head",
    "send_json",
    "write",
]

_MAX_HEADERS = 100
_JSON = "application/json; charset=UTF-8"
_SERVER = "glm-guard-simulator"
LAST_CHUNK = b"0\r\n\r\n"


class BadRequest(Exception):
    """The peer sent something that is not acceptable HTTP/1.1; answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientGone(Exception):
    """The peer closed the connection while we were writing."""


@dataclass(slots=True)
class HTTPRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise BadRequest(431, "header line too long") from exc


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int) -> HTTPRequest | None:
    """Read one request; ``None`` on a clean EOF between requests."""
    try:
        line = await _read_line(reader)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest(400, "truncated request line") from exc
        return None
    while line in (b"\r\n", b"\n"):  # RFC 9112 §2.2: ignore stray CRLF before a request
        line = await _read_line(reader)
    try:
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ")
    except ValueError as exc:
        raise BadRequest(400, "malformed request line") from exc
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505, "HTTP version not supported")

    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        raw = (await _read_line(reader)).decode("latin-1").rstrip("\r\n")
        if not raw:
            break
        name, sep, value = raw.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    else:
        raise BadRequest(431, "too many headers")

    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()

    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader, max_body)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise BadRequest(400, "bad Content-Length") from exc
        if length < 0:
            raise BadRequest(400, "bad Content-Length")
        if length > max_body:
            raise BadRequest(413, "request body too large")
        body = await reader.readexactly(length)
    return HTTPRequest(method, target, version, headers, body)


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = (await _read_line(reader)).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError as exc:
            raise BadRequest(400, "bad chunk size") from exc
        if size == 0:
            while (await _read_line(reader)).strip():  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > max_body:
            raise BadRequest(413, "request body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # CRLF after each chunk


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """Status line plus headers, with ``Date`` added the way nginx (GLM's front) does."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
    ]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a ``Transfer-Encoding: chunked`` body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def origin_headers() -> list[tuple[str, str]]:
    """``Server`` and a fresh ``x-log-id``, as every GLM answer carries one."""
    return [("Server", _SERVER), ("x-log-id", uuid.uuid4().hex)]


async def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send ``data`` and wait for the buffer to drain; a vanished peer is :class:`ClientGone`."""
    if writer.is_closing():
        raise ClientGone
    writer.write(data)
    try:
        await writer.drain()
    except (ConnectionError, OSError) as exc:
        raise ClientGone from exc


async def send_json(
    writer: asyncio.StreamWriter,
    status: int,
    payload: Mapping[str, Any],
    *,
    keep: bool,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    """One complete JSON response with ``Content-Length``."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [
        ("Content-Type", _JSON),
        ("Content-Length", str(len(body))),
        ("Connection", "keep-alive" if keep else "close"),
        *origin_headers(),
        *(extra or []),
    ]
    await write(writer, response_head(status, headers) + body)
