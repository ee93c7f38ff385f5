"""What both flavours of the guarded client share: settings, the request body, the guard.

Each client posts to ``{base_url}/chat/completions`` through ``glm_guard.http``'s guarded
transport, so there is one guarded HTTP path in the library: admission, cooldown and retries
on 1302 happen there, keyed ``glm:{model}`` (the model read from the body) because GLM limits
calls in flight per account and model.  With no concurrency configured the limit is learned
from GLM's answers (``concurrency="auto"``): GLM publishes none, and no fixed number fits both
quiet and peak hours.  Without ``backend=`` the guard takes ``GLM_GUARD_BACKEND`` as a guard
given no backend does, so with Redis there the client's calls are counted in the fleet's
shared stats.  What the transport cannot see, a stream that broke off before its first chunk,
the client retries itself (``_stream_retry_delay``), each attempt admitted by the transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from ._api_errors import GLMAPIError
from ._auto_concurrency import AutoConcurrency
from ._config import get_settings, is_testing, mask_url
from ._errors import ConfigurationError

if TYPE_CHECKING:
    import httpx

    from .backends._base import Backend
    from .http._policy import Policy

__all__ = ["ClientBase", "Message"]

Message = Mapping[str, Any]

_USER_AGENT: Final = "glm-guard"
#: The longest pause before reopening a stream that broke off before its first chunk.
_STREAM_RETRY_MAX_DELAY: Final = 4.0


def _glm_key(request: httpx.Request) -> str:
    """``glm:{model}``: the key the seed's client has always used, so its stats and learned
    limits carry over."""
    from .http._policy import _model_of

    return f"glm:{_model_of(request) or 'unknown'}"


def raise_for(response: httpx.Response) -> None:
    """An error answer (body read) as the client's error: the guard's own verdict when it gave
    up or refused (a :class:`~glm_guard.GLMRateLimitException`, caused by GLM's last answer),
    else GLM's answer as a :class:`GLMAPIError`, passed on unretried."""
    from .http._exchange import GAVE_UP

    error = GLMAPIError.from_response(response)
    gave_up = response.extensions.get(GAVE_UP)
    if isinstance(gave_up, BaseException):
        raise gave_up from error
    raise error


def stream_retry_delay(attempt: int) -> float:
    """The pause before reopening a stream that broke off before its first chunk."""
    return 0.0 if is_testing() else min(_STREAM_RETRY_MAX_DELAY, 0.5 * 2 ** (attempt - 1))


def _policy_module() -> ModuleType:
    from .http import _policy

    return _policy


def _httpx() -> ModuleType:
    try:
        import httpx
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError("httpx", "get_llm_client() needs httpx: pip install 'glm-guard[client]'") from None
    return httpx


class ClientBase:
    """What both flavours share: settings, the request body, and the transport's policy."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        max_tries: int | None = None,
        timeout: float | None = None,
        calls_per_minute: int | None = None,
        concurrency: int | AutoConcurrency | str | None = None,
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
        configured = settings.max_concurrency if concurrency is None else concurrency
        self.concurrency = AutoConcurrency() if configured is None else configured
        self.backend = settings.backend if backend is None else backend
        # backend=None lets the transport take GLM_GUARD_BACKEND itself, so the guard counts as
        # chosen by the environment: its stats go where the environment's do.
        self._url = f"{self.base_url}/chat/completions"
        # Built now, so a bad limit or backend fails here, not on the first call; every
        # connection pool (per process, per event loop) shares its keys and limiters.
        self._policy: Policy = _policy_module().Policy(
            calls=self.calls_per_minute,
            period=60,
            concurrency=self.concurrency,
            key=_glm_key,
            backend=backend,
            max_tries=self.max_tries,
        )
        self._setup()

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

    def _setup(self) -> None:
        """Per-flavour connection state."""
