"""glm_guard: keep code that calls LLM APIs inside the provider's limits.

Four decorators that stack on any sync or async function or method::

    @cached_response(ttl=600)
    @fallback(lambda question: "系统繁忙,请稍后重试。")
    @retry_on_1302(max_tries=5)
    @rate_limited(concurrency=2)
    async def ask(question: str) -> str: ...
"""

from __future__ import annotations

from ._cache import cached_response
from ._classify import Classifier, ErrorInfo
from ._config import Settings, get_settings, is_testing, reload_settings, set_testing
from ._errors import (
    BackendError,
    ConfigurationError,
    GLMGuardError,
    GLMRateLimitException,
    RateLimitTimeout,
)
from ._fallback import fallback
from ._marks import is_degraded
from ._rate_limit import rate_limited
from ._retry import retry_on_1302

__all__ = [
    "BackendError",
    "Classifier",
    "ConfigurationError",
    "ErrorInfo",
    "GLMGuardError",
    "GLMRateLimitException",
    "RateLimitTimeout",
    "Settings",
    "__version__",
    "cached_response",
    "fallback",
    "get_settings",
    "is_degraded",
    "is_testing",
    "rate_limited",
    "reload_settings",
    "retry_on_1302",
    "set_testing",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("glm-guard")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
