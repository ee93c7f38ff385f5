"""The errors the guarded client raises for GLM's answers.

Both carry a ``code`` that the classifier reads, so a retry decides by GLM's business code
(or by how a stream broke off), never by the HTTP status alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._classify import _code_and_type
from ._errors import GLMGuardError

if TYPE_CHECKING:
    import httpx

__all__ = ["GLMAPIError", "GLMStreamError"]


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
