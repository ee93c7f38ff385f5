"""``get_llm_client()``: the seed's guarded GLM client, built from the decorators.

The seed's services already call ``await get_llm_client().call_api(messages=...)`` and catch
``GLMRateLimitException``; this module makes that code work as written.  Each call is an HTTP
POST (httpx) to ``{base_url}/chat/completions`` through ``retry_on_1302`` outside
``rate_limited``, keyed ``glm:{model}`` because GLM limits calls in flight per account and
model.  Neither httpx nor asyncio is imported until a client is built, so ``import glm_guard``
stays light for code that only uses the decorators.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, overload

from ._classify import DEFAULT_RETRYABLE_CODES, _code_and_type
from ._config import Settings, get_settings, mask_url
from ._errors import ConfigurationError, GLMGuardError
from ._rate_limit import rate_limited
from ._retry import retry_on_1302

if TYPE_CHECKING:
    import asyncio

    import httpx

    from .backends._base import Backend

__all__ = ["AsyncLLMClient", "GLMAPIError", "GLMStreamError", "LLMClient", "get_llm_client"]

Message = Mapping[str, Any]
Chunk = dict[str, Any]

#: Before its first chunk a stream that broke off can be retried without repeating any text.
_STREAM_RETRY_CODES: Final = DEFAULT_RETRYABLE_CODES | {"network_error", "connection_lost"}
_USER_AGENT: Final = "glm-guard"
# Clients a forked child must neither use nor close (their sockets belong to the parent);
# kept referenced so the garbage collector never closes them either.
_ABANDONED: list[object] = []


def _httpx() -> ModuleType:
    try:
        import httpx
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError("httpx", "get_llm_client() needs httpx: pip install 'glm-guard[client]'") from None
    return httpx


class GLMAPIError(GLMGuardError):
    """GLM answered with an error; the body is already read, so the guard can see its business code.

    The HTTP status alone cannot tell a transient ``1302`` from a permanent ``1113`` (both are
    429), so ``code`` and ``body`` carry the code the classifier decides by.

    Attributes:
        status_code: the HTTP status.
        code: GLM's business code (``"1302"``), or ``None`` when the body names none.
        body: the parsed JSON body (or its text when it is not JSON).
        headers: the response headers (``Retry-After`` is honoured if GLM ever sends it).
        response: the ``httpx.Response``, already read.
    """

    def __init__(self, status_code: int, body: Any, headers: Mapping[str, str], response: Any = None) -> None:
        self.status_code = status_code
        self.body = body
        self.headers = headers
        self.response = response
        self.code: str | None = None
        message = ""
        if isinstance(body, Mapping):
            self.code = _code_and_type(body)[0]
            inner = body.get("error")
            found = (inner if isinstance(inner, Mapping) else body).get("message")
            message = str(found) if found is not None else ""
        elif isinstance(body, str):
            message = body
        super().__init__(f"GLM API error: HTTP {status_code}, code {self.code or 'none'}: {message[:300]}".rstrip(": "))

    @classmethod
    def from_response(cls, response: httpx.Response) -> GLMAPIError:
        """Build the error from a response whose body has been read."""
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return cls(response.status_code, body, response.headers, response)


class GLMStreamError(GLMGuardError):
    """A stream broke off after output had started, so it is surfaced instead of retried.

    GLM reports a failure during inference only as ``finish_reason="network_error"`` (or the
    connection just drops); retrying then would repeat text the caller already has.  Before
    the first chunk the same failure is retried.  The partial text is not kept here, only its
    size, so the error can be logged without leaking the answer.

    Attributes:
        reason: ``"network_error"`` (GLM's finish_reason) or ``"connection_lost"``.
        chunks: chunks delivered before the failure.
        partial_chars: characters of content delivered before the failure.
    """

    def __init__(self, reason: str, chunks: int, partial_chars: int) -> None:
        self.reason = reason
        self.code = reason  # read by the stream's retry, which only acts before the first chunk
        self.chunks = chunks
        self.partial_chars = partial_chars
        super().__init__(
            f"GLM stream ended abnormally ({reason}) after {chunks} chunk(s), {partial_chars} characters of content"
        )


def _parse(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise GLMAPIError.from_response(response)
    try:
        data = response.json()
    except ValueError:
        raise GLMAPIError(response.status_code, response.text, response.headers, response) from None
    if not isinstance(data, dict) or "error" in data:
        raise GLMAPIError(response.status_code, data, response.headers, response)
    return data


class _StreamReader:
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


class _ClientBase:
    """What both flavours share: settings, the request body, and one guard per model."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        max_tries: int | None = None,
        timeout: float | None = None,
        calls_per_minute: int | None = None,
        concurrency: int | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        settings = get_settings()
        key = settings.api_key if api_key is None else api_key.strip()
        if not key:
            raise ConfigurationError(
                "GLM_API_KEY", "must be set (or ZHIPUAI_API_KEY, or pass api_key=...) to call the GLM API"
            )
        self._httpx = _httpx()
        self._api_key = key
        self.base_url = (settings.api_base_url if base_url is None else base_url).rstrip("/")
        self.model = settings.model if model is None else model
        self.max_tries = settings.max_tries if max_tries is None else max_tries
        self.timeout = settings.request_timeout if timeout is None else timeout
        self.calls_per_minute = settings.max_calls_per_minute if calls_per_minute is None else calls_per_minute
        self.concurrency = settings.max_concurrency if concurrency is None else concurrency
        self.backend = settings.backend if backend is None else backend
        self._url = f"{self.base_url}/chat/completions"
        self._guards: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
        self._guards_lock = threading.Lock()
        self._setup()
        self._guard(self.model)  # a bad limit or backend fails here, not on the first call

    def __repr__(self) -> str:
        backend = mask_url(self.backend) if isinstance(self.backend, str) else repr(self.backend)
        return (
            f"{type(self).__name__}(base_url={mask_url(self.base_url)!r}, model={self.model!r}, "
            f"max_tries={self.max_tries}, calls_per_minute={self.calls_per_minute}, "
            f"concurrency={self.concurrency}, backend={backend!r}, api_key='***')"
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}", "User-Agent": _USER_AGENT}

    def _body(
        self,
        messages: Sequence[Message],
        model: str | None,
        temperature: float | None,
        max_tokens: int | None,
        stream: bool,
        params: Mapping[str, Any],
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model or self.model, "messages": list(messages)}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stream:
            body["stream"] = True
        body.update(params)
        return body

    def _guard(self, model: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """``(call, stream)`` for ``model``, decorated once and reused."""
        guard = self._guards.get(model)
        if guard is None:
            with self._guards_lock:
                guard = self._guards.get(model)
                if guard is None:
                    limit = rate_limited(
                        calls=self.calls_per_minute,
                        period=60,
                        concurrency=self.concurrency,
                        key=f"glm:{model}",
                        backend=self.backend,
                    )
                    call, stream = self._raw()
                    call.__qualname__ = stream.__qualname__ = f"{type(self).__name__}.call_api[{model}]"
                    guard = self._guards[model] = (
                        retry_on_1302(max_tries=self.max_tries)(limit(call)),
                        retry_on_1302(max_tries=self.max_tries, retry_codes=_STREAM_RETRY_CODES)(limit(stream)),
                    )
        return guard

    def _setup(self) -> None:
        """Per-flavour connection state."""

    def _raw(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        raise NotImplementedError


class LLMClient(_ClientBase):
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
                    self._http = self._httpx.Client(timeout=self.timeout, headers=self._headers())
                    self._pid = os.getpid()
        return self._http

    def _raw(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        def call(body: dict[str, Any]) -> dict[str, Any]:
            return _parse(self._client().post(self._url, json=body))

        def stream(body: dict[str, Any]) -> Generator[Chunk, None, None]:
            with self._client().stream("POST", self._url, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise GLMAPIError.from_response(response)
                reader = _StreamReader(response)
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

        return call, stream

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
        call, streamer = self._guard(body["model"])
        if not stream:
            result: dict[str, Any] = call(body)
            return result
        chunks: Generator[Chunk, None, None] = streamer(body)
        try:
            first = next(chunks)
        except StopIteration:
            return iter(())
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


class AsyncLLMClient(_ClientBase):
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
            http: httpx.AsyncClient = self._httpx.AsyncClient(timeout=self.timeout, headers=self._headers())
            closer = _close_with_loop(http, os.getpid())
            await closer.__anext__()  # the loop now owns it and closes it at shutdown_asyncgens
            entry = self._loops[loop] = (os.getpid(), http, closer)
        return entry[1]

    def _raw(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        async def call(body: dict[str, Any]) -> dict[str, Any]:
            http = await self._client()
            return _parse(await http.post(self._url, json=body))

        async def stream(body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
            http = await self._client()
            async with http.stream("POST", self._url, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise GLMAPIError.from_response(response)
                reader = _StreamReader(response)
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

        return call, stream

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
        body = self._body(messages, model, temperature, max_tokens, stream, params)
        call, streamer = self._guard(body["model"])
        if not stream:
            result: dict[str, Any] = await call(body)
            return result
        chunks: AsyncGenerator[Chunk, None] = streamer(body)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            return _empty()
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
