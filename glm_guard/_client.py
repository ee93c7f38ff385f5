"""``get_llm_client()``: the seed's guarded GLM client, built on ``glm_guard.http``'s transport.

The seed's services already call ``await get_llm_client().call_api(messages=...)`` and catch
``GLMRateLimitException``; this module makes that code work as written.  The two flavours
here differ only in how they hold connections and read responses (sync or async); what they
share is in ``_client_base``.  Neither httpx nor asyncio is imported until a client is built,
so ``import glm_guard`` stays light for code that only uses the decorators.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

from ._api_errors import GLMAPIError, GLMStreamError
from ._client_base import ClientBase, Message, raise_for, stream_retry_delay
from ._config import Settings, get_settings
from ._sse import Chunk, StreamReader

if TYPE_CHECKING:
    import asyncio

    import httpx

__all__ = ["AsyncLLMClient", "LLMClient", "get_llm_client"]

# Clients a forked child must neither use nor close (their sockets belong to the parent);
# kept referenced so the garbage collector never closes them either.
_ABANDONED: list[object] = []


def _parse(response: httpx.Response) -> dict[str, Any]:
    """The completion in a non-streaming response; an error body raises even with HTTP 200."""
    if response.status_code >= 400:
        raise_for(response)
    try:
        data = response.json()
    except ValueError:
        raise GLMAPIError(response.status_code, response.text, response.headers, response) from None
    if not isinstance(data, dict) or "error" in data:
        raise GLMAPIError(response.status_code, data, response.headers, response)
    return data


class LLMClient(ClientBase):
    """The sync flavour: one ``httpx.Client`` per process, safe to share between threads."""

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._http: httpx.Client | None = None

    def _client(self) -> httpx.Client:
        if self._http is None or self._pid != os.getpid():
            with self._lock:
                if self._http is None or self._pid != os.getpid():
                    if self._http is not None:  # forked: the parent's sockets are not ours
                        _ABANDONED.append(self._http)
                    from .http._transport import GuardedTransport

                    transport = GuardedTransport._sharing(self._policy, self._httpx.HTTPTransport())
                    self._http = self._httpx.Client(transport=transport, timeout=self.timeout, headers=self._headers())
                    self._pid = os.getpid()
        return self._http

    def _stream(self, body: dict[str, Any]) -> Generator[Chunk, None, None]:
        with self._client().stream("POST", self._url, json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise_for(response)
            reader = StreamReader(response)
            try:
                for line in response.iter_lines():
                    chunk = reader.feed(line)
                    if chunk is not None:
                        yield chunk
                    if reader.done:
                        return
            except self._httpx.TransportError as error:
                raise reader.lost(error) from error
            reader.check_complete()

    @overload
    def call_api(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: Literal[False] = False,
        **params: Any,
    ) -> dict[str, Any]: ...

    @overload
    def call_api(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: Literal[True],
        **params: Any,
    ) -> Iterator[Chunk]: ...

    def call_api(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: bool = False,
        **params: Any,
    ) -> dict[str, Any] | Iterator[Chunk]:
        """POST one chat completion; the parsed JSON, or with ``stream=True`` an iterator of chunks.

        Raises :class:`~glm_guard.GLMRateLimitException` when the guard gives up.  A stream is
        opened (and retried if need be) before this returns, so that error surfaces here too;
        iterate the stream to the end or ``close()`` it to give its permit back.
        """
        body = self._body(messages, model, temperature, max_tokens, stream, params)
        if not stream:
            return _parse(self._client().post(self._url, json=body))
        attempt = 1
        while True:
            chunks = self._stream(body)
            try:
                first = next(chunks)
            except StopIteration:
                return iter(())
            except GLMStreamError:
                if attempt >= self.max_tries:
                    raise
                time.sleep(stream_retry_delay(attempt))
                attempt += 1
                continue
            return _chain(first, chunks)

    def close(self) -> None:
        """Close this process's connections; the client reconnects if used again."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None and self._pid == os.getpid():
            http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _chain(first: Chunk, rest: Generator[Chunk, None, None]) -> Generator[Chunk, None, None]:
    try:
        yield first
        yield from rest
    finally:
        rest.close()


class AsyncLLMClient(ClientBase):
    """The async flavour: one ``httpx.AsyncClient`` per event loop (and per process).

    Loop-bound connections are never shared across loops; each is closed by the loop's own
    shutdown (``asyncio.run`` ends by closing async generators, one of which owns it), or
    earlier by :meth:`aclose`.
    """

    def _setup(self) -> None:
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[int, httpx.AsyncClient, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    async def _client(self) -> httpx.AsyncClient:
        import asyncio

        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None or entry[0] != os.getpid():
            if entry is not None:
                _ABANDONED.append(entry)
            from .http._transport import AsyncGuardedTransport

            transport = AsyncGuardedTransport._sharing(self._policy, self._httpx.AsyncHTTPTransport())
            http: httpx.AsyncClient = self._httpx.AsyncClient(
                transport=transport, timeout=self.timeout, headers=self._headers()
            )
            closer = _close_with_loop(http, os.getpid())
            await closer.__anext__()  # the loop now owns it and closes it at shutdown_asyncgens
            entry = self._loops[loop] = (os.getpid(), http, closer)
        return entry[1]

    async def _stream(self, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        http = await self._client()
        async with http.stream("POST", self._url, json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise_for(response)
            reader = StreamReader(response)
            try:
                async for line in response.aiter_lines():
                    chunk = reader.feed(line)
                    if chunk is not None:
                        yield chunk
                    if reader.done:
                        return
            except self._httpx.TransportError as error:
                raise reader.lost(error) from error
            reader.check_complete()

    @overload
    async def call_api(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: Literal[False] = False,
        **params: Any,
    ) -> dict[str, Any]: ...

    @overload
    async def call_api(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: Literal[True],
        **params: Any,
    ) -> AsyncIterator[Chunk]: ...

    async def call_api(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: bool = False,
        **params: Any,
    ) -> dict[str, Any] | AsyncIterator[Chunk]:
        """POST one chat completion; the parsed JSON, or with ``stream=True`` an async iterator of chunks.

        Raises :class:`~glm_guard.GLMRateLimitException` when the guard gives up.  A stream is
        opened (and retried if need be) before the ``await`` returns, so that error surfaces
        there too; iterate the stream to the end or ``aclose()`` it to give its permit back.
        """
        import asyncio

        body = self._body(messages, model, temperature, max_tokens, stream, params)
        if not stream:
            http = await self._client()
            return _parse(await http.post(self._url, json=body))
        attempt = 1
        while True:
            chunks = self._stream(body)
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                return _empty()
            except GLMStreamError:
                if attempt >= self.max_tries:
                    raise
                await asyncio.sleep(stream_retry_delay(attempt))
                attempt += 1
                continue
            return _achain(first, chunks)

    async def aclose(self) -> None:
        """Close the current event loop's connections; the client reconnects if used again."""
        import asyncio

        entry = self._loops.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[2].aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _close_with_loop(http: httpx.AsyncClient, pid: int) -> AsyncGenerator[None, None]:
    """An async generator whose ``finally`` runs when ``asyncio.run`` shuts the loop down."""
    try:
        yield
    finally:
        if os.getpid() == pid:
            await http.aclose()


async def _achain(first: Chunk, rest: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


async def _empty() -> AsyncGenerator[Chunk, None]:
    return
    yield  # pragma: no cover - makes this an async generator


_instances_lock = threading.Lock()
_instances: dict[bool, tuple[Settings, LLMClient | AsyncLLMClient]] = {}


@overload
def get_llm_client(*, sync: Literal[False] = False) -> AsyncLLMClient: ...


@overload
def get_llm_client(*, sync: Literal[True]) -> LLMClient: ...


def get_llm_client(*, sync: bool = False) -> LLMClient | AsyncLLMClient:
    """The process's guarded GLM client, configured from the environment.

    Async by default, as the seed awaits ``client.call_api(...)``; ``sync=True`` for threads.
    One client per flavour, so every caller shares its connections and its limits; it is
    rebuilt when :func:`~glm_guard.reload_settings` installs new settings.
    """
    settings = get_settings()
    with _instances_lock:
        entry = _instances.get(sync)
        if entry is not None and entry[0] is settings:
            return entry[1]
        client: LLMClient | AsyncLLMClient = LLMClient() if sync else AsyncLLMClient()
        _instances[sync] = (settings, client)
    if entry is not None and isinstance(entry[1], LLMClient):
        entry[1].close()  # the replaced client's connections would otherwise linger
    return client
