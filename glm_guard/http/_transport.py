"""The guarded httpx transports: every request an SDK sends passes the guard.

An SDK given ``httpx.Client(transport=GuardedTransport(...))`` sends each attempt, its own
retries included, through :meth:`handle_request`: admitted by the key's limiter, answered,
and retried here on a rate limit.  A successful answer keeps its permit until its body has
been read or its stream closed, so a streamed completion counts as in flight while it streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Self, Unpack

import httpx

from .._errors import KeyPausedError, RateLimitTimeout
from ._exchange import Exchange, Hold
from ._policy import Policy, PolicyOptions

__all__ = ["AsyncGuardedTransport", "GuardedTransport"]

_REFUSALS = (KeyPausedError, RateLimitTimeout)


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that applies ``rate_limited`` and ``retry_on_1302`` to each request.

    ``transport`` is the one that really sends (default ``httpx.HTTPTransport()``); the other
    keywords are the decorators' own, validated here.  ``key`` defaults to ``host:model`` (the
    model read from the JSON body); a string or a function of the request replaces it.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, **policy: Unpack[PolicyOptions]) -> None:
        self._policy = Policy(**policy)
        self._transport = httpx.HTTPTransport() if transport is None else transport

    @classmethod
    def _sharing(cls, policy: Policy, transport: httpx.BaseTransport) -> Self:
        """A transport on a policy already built, so several share its keys and limiters."""
        self = cls.__new__(cls)
        self._policy, self._transport = policy, transport
        return self

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        exchange = Exchange(self._policy, request)
        previous: tuple[httpx.Response, httpx.HTTPStatusError] | None = None  # the server's last answer
        with exchange.run:
            while True:
                hold = exchange.hold()
                try:
                    hold.held.__enter__()
                except _REFUSALS as refusal:
                    hold.done = True
                    return exchange.refused(refusal, previous)
                try:
                    response = self._transport.handle_request(request)
                    hold.held.answered(response)  # the provider's rate-limit headers, if it sends them
                    if response.status_code < 400:
                        if response.is_closed:  # answered in full already (a mock, a cache): done
                            hold.end(None, last=True)
                        else:
                            response.stream = _Stream(response.stream, hold)
                        return response
                    response.read()
                except BaseException as failure:
                    hold.end(failure, last=True)
                    raise
                answer = exchange.error_of(response)
                hold.end(answer)
                delay = exchange.delay_after(answer)
                if delay is None or not exchange.retry(exchange.run.budget_allows()):
                    return exchange.final(response, answer)
                previous = response, answer
                if delay > 0:
                    time.sleep(delay)

    def close(self) -> None:
        self._transport.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`GuardedTransport` (default inner ``httpx.AsyncHTTPTransport()``).

    Cancelling the caller gives the permit back at once, whether it is waiting for the answer
    or reading the stream.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **policy: Unpack[PolicyOptions]) -> None:
        self._policy = Policy(**policy)
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport

    @classmethod
    def _sharing(cls, policy: Policy, transport: httpx.AsyncBaseTransport) -> Self:
        """A transport on a policy already built (one per event loop, sharing the limits)."""
        self = cls.__new__(cls)
        self._policy, self._transport = policy, transport
        return self

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = Exchange(self._policy, request)
        previous: tuple[httpx.Response, httpx.HTTPStatusError] | None = None  # the server's last answer
        with exchange.run:
            while True:
                hold = exchange.hold()
                try:
                    await hold.held.__aenter__()
                except _REFUSALS as refusal:
                    hold.done = True
                    return exchange.refused(refusal, previous)
                try:
                    response = await self._transport.handle_async_request(request)
                    hold.held.answered(response)  # the provider's rate-limit headers, if it sends them
                    if response.status_code < 400:
                        if response.is_closed:  # answered in full already (a mock, a cache): done
                            await hold.aend(None, last=True)
                        else:
                            response.stream = _AsyncStream(response.stream, hold)
                        return response
                    await response.aread()
                except BaseException as failure:
                    await hold.aend(failure, last=True)
                    raise
                answer = exchange.error_of(response)
                await hold.aend(answer)
                delay = exchange.delay_after(answer)
                if delay is None or not exchange.retry(await exchange.run.budget_allows_async()):
                    return exchange.final(response, answer)
                previous = response, answer
                if delay > 0:
                    await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._transport.aclose()


class _Stream(httpx.SyncByteStream):
    """A body that gives its permit back when it is closed, read to the end, or breaks."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, hold: Hold) -> None:
        assert isinstance(stream, httpx.SyncByteStream)
        self._stream = stream
        self._hold = hold

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except BaseException as error:
            self._hold.end(error, last=True)
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._hold.end(None, last=True)


class _AsyncStream(httpx.AsyncByteStream):
    """The async body: a cancelled reader gives the permit back as the cancellation passes."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, hold: Hold) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._hold = hold

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except BaseException as error:
            await self._hold.aend(error, last=True)
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            await self._hold.aend(None, last=True)
