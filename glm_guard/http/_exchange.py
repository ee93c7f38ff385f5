"""One request through a guarded transport: the decisions, without I/O.

The drivers (sync and async, in ``_transport``) send, read and sleep; this object says what
each answer means.  Admission, cooldowns, pauses and learned limits are ``rate_limited``'s own
(``_Held``); the retry loop's decisions and its budget are ``retry_on_1302``'s own (``_Run``).
An error answer is read in full and classified as an ``httpx.HTTPStatusError`` carrying the
raw response, so the GLM business code in the body decides, before any SDK maps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import httpx

from .._errors import GLMRateLimitException, RetryBudgetExhausted
from .._retry import _Run

if TYPE_CHECKING:
    from .._rate_limit import _Held, _Unguarded
    from .._stack import _Report
    from ._policy import Policy

__all__ = ["Exchange", "Hold"]

#: The header the openai-style SDKs (openai, zai-sdk, zhipuai) read before retrying on their own.
SHOULD_RETRY: Final = "x-should-retry"
#: Marks an answer the guard made itself, without asking the server.
REFUSED_BY: Final = "x-glm-guard"
#: The response extension carrying the guard's own verdict when it gave up or refused
#: (a :class:`~glm_guard.GLMRateLimitException`), for callers that raise the guard's errors
#: rather than an SDK's, as ``get_llm_client()`` does.
GAVE_UP: Final = "glm_guard.gave_up"


class Exchange:
    """A logical call: its key's route, its retry run, and what each answer leads to."""

    __slots__ = ("call", "gave_up", "policy", "request", "route", "run")

    def __init__(self, policy: Policy, request: httpx.Request) -> None:
        self.policy = policy
        self.request = request
        self.route = policy.route(request)
        self.run = _Run(self.route.retry, self.route.stack, (), {})
        self.call: _Report = self.route.stack.call()
        self.gave_up: GLMRateLimitException | None = None

    def hold(self) -> Hold:
        """A permit for the next attempt (not yet acquired)."""
        stack = self.route.stack
        return Hold(self.policy.guard.held(self.route.limiter, stack, (), {}), stack.attempt(), self.call)

    def error_of(self, response: httpx.Response) -> httpx.HTTPStatusError:
        """An error answer (already read) as an exception the classifier reads in full."""
        return httpx.HTTPStatusError(f"HTTP {response.status_code}", request=self.request, response=response)

    def delay_after(self, error: httpx.HTTPStatusError) -> float | None:
        """Seconds before the next attempt; ``None``: the answer goes to the caller as it is
        (not a rate limit, a permanent error, attempts or time ran out, or an outer
        ``retry_on_1302`` owns the retries)."""
        try:
            return self.run.delay_after(None, error)
        except httpx.HTTPStatusError:
            return None
        except GLMRateLimitException as gave_up:
            self.gave_up = gave_up
            return None

    def retry(self, allowed: bool) -> bool:
        """The planned retry goes, unless the key's retry budget refused it."""
        try:
            self.run.retry(allowed)
        except RetryBudgetExhausted as spent:
            self.gave_up = spent
            return False
        return True

    def final(self, response: httpx.Response, error: httpx.HTTPStatusError) -> httpx.Response:
        """The last error answer, as the server sent it, told not to be retried by the SDK
        when a retry is the guard's business (a rate limit, or a permanent error)."""
        if self.route.stack.verdict(error).kind in ("rate_limit", "permanent"):
            response.headers[SHOULD_RETRY] = "false"
        if self.gave_up is not None:
            response.extensions[GAVE_UP] = self.gave_up
        self.call.report(error)
        return response

    def refused(
        self, refusal: GLMRateLimitException, previous: tuple[httpx.Response, httpx.HTTPStatusError] | None
    ) -> httpx.Response:
        """The guard's own refusal (the key is paused, ``max_wait`` ran out).  After an attempt
        the server's last answer goes back as it was; before any, a 429 in GLM's shape, so the
        SDK raises its own rate-limit error, and does not retry it."""
        if previous is not None:
            self.gave_up = refusal
            return self.final(*previous)
        body: dict[str, Any] = {
            "error": {"code": refusal.code or "glm_guard", "message": str(refusal), "type": type(refusal).__name__}
        }
        self.call.report(refusal)
        headers = {SHOULD_RETRY: "false", REFUSED_BY: "refused"}
        return httpx.Response(429, json=body, headers=headers, request=self.request, extensions={GAVE_UP: refusal})


class Hold:
    """One attempt's permit: acquired before the request, given back once, when the answer has
    been read, the stream closed or broken, or the caller went away."""

    __slots__ = ("attempt", "call", "done", "held")

    def __init__(self, held: _Held | _Unguarded, attempt: _Report, call: _Report) -> None:
        self.held = held
        self.attempt = attempt
        self.call = call
        self.done = False

    def _report(self, error: BaseException | None, last: bool) -> None:
        if error is None or isinstance(error, Exception):
            self.attempt.report(error)
            if last:
                self.call.report(error)

    def end(self, error: BaseException | None, *, last: bool = False) -> None:
        """Give the permit back; ``error`` teaches the limit (``None``: the exchange succeeded)."""
        if self.done:
            return
        self.done = True
        try:
            self.held.__exit__(None if error is None else type(error), error, None)
        finally:
            self._report(error, last)

    async def aend(self, error: BaseException | None, *, last: bool = False) -> None:
        if self.done:
            return
        self.done = True
        try:
            await self.held.__aexit__(None if error is None else type(error), error, None)
        finally:
            self._report(error, last)
