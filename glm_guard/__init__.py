"""glm_guard: keep code that calls LLM APIs inside the provider's limits.

Four decorators that stack on any sync or async function or method::

    @cached_response(ttl=600)
    @fallback(lambda question: "系统繁忙,请稍后重试。")
    @retry_on_1302(max_tries=5)
    @rate_limited(concurrency=2)
    async def ask(question: str) -> str: ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy
from ._auto_concurrency import AutoConcurrency
from ._cache import cached_response
from ._call_context import is_degraded
from ._classify import Classifier, ErrorInfo
from ._config import Settings, get_settings, is_testing, reload_settings, set_testing
from ._errors import (
    AccountInArrears,
    BackendError,
    BackendRefused,
    BackendRequestError,
    ConfigurationError,
    GLMGuardError,
    GLMRateLimitException,
    KeyPausedError,
    ModelOverloaded,
    QuotaExhausted,
    RateLimitTimeout,
    RetryBudgetExhausted,
)
from ._fallback import fallback
from ._rate_limit import rate_limited
from ._retry import retry_on_1302
from ._token_budget import count_tokens, token_estimate
from .backends._base import RetryBudgetPolicy
from .monitoring import configure_stats, on_alert, rate_limit_stats, stats, subscribe

if TYPE_CHECKING:
    from ._api_errors import GLMAPIError, GLMStreamError
    from ._client import AsyncLLMClient, LLMClient, get_llm_client
    from ._sdk import SDKRetryWarning, sdk_retries_off


def _version() -> str:
    from importlib.metadata import version

    return version("glm-guard")


#: The event classes live in glm_guard.monitoring; they stay reachable here for code that
#: imported them from the top level before they moved.
_MOVED_TO_MONITORING = (
    "Alert AttemptEvent CacheEvent CallEvent FallbackEvent GuardEvent LimitChanged RetryEvent WaitEvent"
)

# The client pulls in more than the decorators need; it is imported on first use.
_LAZY: dict[str, _lazy.Source] = {
    "__version__": _version,
    "AsyncLLMClient": "._client",
    "GLMAPIError": "._api_errors",
    "GLMStreamError": "._api_errors",
    "LLMClient": "._client",
    "get_llm_client": "._client",
    "SDKRetryWarning": "._sdk",
    "sdk_retries_off": "._sdk",
    **dict.fromkeys(_MOVED_TO_MONITORING.split(), ".monitoring"),
}

__all__ = [
    "AccountInArrears",
    "AsyncLLMClient",
    "AutoConcurrency",
    "BackendError",
    "BackendRefused",
    "BackendRequestError",
    "Classifier",
    "ConfigurationError",
    "ErrorInfo",
    "GLMAPIError",
    "GLMGuardError",
    "GLMRateLimitException",
    "GLMStreamError",
    "KeyPausedError",
    "LLMClient",
    "ModelOverloaded",
    "QuotaExhausted",
    "RateLimitTimeout",
    "RetryBudgetExhausted",
    "RetryBudgetPolicy",
    "SDKRetryWarning",
    "Settings",
    "__version__",
    "cached_response",
    "configure_stats",
    "count_tokens",
    "fallback",
    "get_llm_client",
    "get_settings",
    "is_degraded",
    "is_testing",
    "on_alert",
    "rate_limit_stats",
    "rate_limited",
    "reload_settings",
    "retry_on_1302",
    "sdk_retries_off",
    "set_testing",
    "stats",
    "subscribe",
    "token_estimate",
]


__getattr__ = _lazy.module_getattr(__name__, globals(), _LAZY)
