"""``glm_guard.http.client()`` / ``async_client()``: a ready httpx client to hand to an SDK."""

from __future__ import annotations

from typing import Unpack

import httpx

from ._policy import PolicyOptions
from ._transport import AsyncGuardedTransport, GuardedTransport

__all__ = ["async_client", "client"]

#: The SDKs pass their own timeout with each request; this one is for direct use.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def client(
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
    **policy: Unpack[PolicyOptions],
) -> httpx.Client:
    """An ``httpx.Client`` whose every request passes the guard: give it to an SDK as its
    ``http_client``.  ``policy`` takes the keywords of ``rate_limited`` and ``retry_on_1302``,
    validated now; ``transport`` is the inner one that really sends."""
    return httpx.Client(transport=GuardedTransport(transport, **policy), timeout=timeout)


def async_client(
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
    **policy: Unpack[PolicyOptions],
) -> httpx.AsyncClient:
    """The async twin of :func:`client`, an ``httpx.AsyncClient``."""
    return httpx.AsyncClient(transport=AsyncGuardedTransport(transport, **policy), timeout=timeout)
