"""What both flavours of the guarded client share: settings, the request body, the guards.

Each client posts to ``{base_url}/chat/completions`` through ``retry_on_1302`` outside
``rate_limited``, keyed ``glm:{model}`` because GLM limits calls in flight per account and
model; the decorated callables are built once per model and reused.  With no concurrency
configured the limit is learned from GLM's answers (``concurrency="auto"``): GLM publishes
none, and no fixed number fits both quiet and peak hours.  Without ``backend=``
the guard takes ``GLM_GUARD_BACKEND`` as a guard given no backend does, so with Redis
there the client's calls are counted in the fleet's shared stats.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from ._auto_concurrency import AutoConcurrency
from ._classify import DEFAULT_RETRYABLE_CODES
from ._config import get_settings, mask_url
from ._errors import ConfigurationError
from ._rate_limit import rate_limited
from ._retry import retry_on_1302

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = ["ClientBase", "Message"]

Message = Mapping[str, Any]

#: Before its first chunk a stream that broke off can be retried without repeating any text.
_STREAM_RETRY_CODES: Final = DEFAULT_RETRYABLE_CODES | {"network_error", "connection_lost"}
_USER_AGENT: Final = "glm-guard"


def _httpx() -> ModuleType:
    try:
        import httpx
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError("httpx", "get_llm_client() needs httpx: pip install 'glm-guard[client]'") from None
    return httpx


class ClientBase:
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
        # None lets rate_limited take GLM_GUARD_BACKEND itself, so the guard counts as chosen by
        # the environment: its stats go where the environment's do, and follow reload_settings.
        self._backend_argument = backend
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
                        backend=self._backend_argument,
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
