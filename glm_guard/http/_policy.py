"""A transport's policy: the decorators' own keywords, validated by the decorators' own code.

``rate_limited`` and ``retry_on_1302`` each expose the function that validates and freezes
their policy; the transport calls both, so a bad value fails at construction naming its
parameter, exactly as it would on the decorator, and the two can never drift apart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, NamedTuple, TypedDict

from .. import _validate
from .._auto_concurrency import AutoConcurrency
from .._classify import DEFAULT_CLASSIFIER
from .._errors import ConfigurationError
from .._rate_limit import _Guard, limit_guard
from .._retry import _RetryPolicy, retry_policy
from .._stack import Stack
from ..backends import Limiter, get_backend
from ..monitoring import _recorder

if TYPE_CHECKING:
    import httpx

    from ..backends._base import Backend, RetryBudgetPolicy

__all__ = ["KeyFunction", "Policy", "PolicyOptions", "default_key"]

KeyFunction = Callable[["httpx.Request"], str]

#: Bodies longer than this are not parsed for their model: the key is then the host alone.
_MAX_BODY_FOR_MODEL: Final = 4 * 1024 * 1024


class PolicyOptions(TypedDict, total=False):
    """The keywords of ``rate_limited`` and ``retry_on_1302``; ``key`` may also be a function."""

    calls: int | None
    period: float | None
    concurrency: int | AutoConcurrency | str | None
    key: str | KeyFunction | None
    backend: str | Backend | None
    max_wait: float | None
    cooldown: float | None
    on_backend_error: str | None
    arrears_pause: float | None
    overload_pause: float | None
    burst: tuple[int, float] | None
    max_tries: int
    max_time: float | None
    base_delay: float
    max_delay: float
    jitter: bool
    retry_codes: Iterable[str | int] | None
    permanent_codes: Iterable[str | int] | None
    retry_budget: RetryBudgetPolicy | bool | None


def default_key(request: httpx.Request) -> str:
    """``host:model``: GLM limits calls in flight per account and model, so one budget per
    model and endpoint; the host alone for a request that names no model."""
    host = request.url.host
    model = _model_of(request)
    return host if model is None else f"{host}:{model}"


def _model_of(request: httpx.Request) -> str | None:
    if "json" not in request.headers.get("content-type", ""):
        return None
    try:
        content = request.content
    except Exception:  # a streamed request body, not read: no model to find
        return None
    if not content.startswith(b"{") or len(content) > _MAX_BODY_FOR_MODEL:
        return None
    try:
        model = json.loads(content).get("model")
    except ValueError:
        return None
    return model if isinstance(model, str) and model.strip() else None


class Route(NamedTuple):
    """Everything one key needs: its limiter, its stack (stats key, classifier, retry budget)
    and its retry policy."""

    limiter: Limiter
    stack: Stack
    retry: _RetryPolicy


class Policy:
    """One transport's frozen policy, and the route of each key it has seen."""

    __slots__ = ("_lock", "_make_retry", "_routes", "backend", "classifier", "guard", "key")

    def __init__(
        self,
        *,
        calls: int | None = None,
        period: float | None = None,
        concurrency: int | AutoConcurrency | str | None = None,
        key: str | KeyFunction | None = None,
        backend: str | Backend | None = None,
        max_wait: float | None = None,
        cooldown: float | None = None,
        on_backend_error: str | None = None,
        arrears_pause: float | None = None,
        overload_pause: float | None = None,
        burst: tuple[int, float] | None = None,
        max_tries: int = 5,
        max_time: float | None = None,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        jitter: bool = True,
        retry_codes: Iterable[str | int] | None = None,
        permanent_codes: Iterable[str | int] | None = None,
        retry_budget: RetryBudgetPolicy | bool | None = None,
    ) -> None:
        self.guard: _Guard = limit_guard(
            calls, period, concurrency, max_wait, cooldown, on_backend_error, arrears_pause, overload_pause, burst=burst
        )
        self._make_retry, classifier = retry_policy(
            max_tries, max_time, base_delay, max_delay, jitter, retry_codes, permanent_codes, False, retry_budget
        )
        self.classifier = classifier or DEFAULT_CLASSIFIER
        if key is not None and not callable(key):
            _validate.key_name("key", key)
        self.key: str | KeyFunction = default_key if key is None else key
        self.backend = get_backend(backend)
        _recorder.ensure_started()
        _recorder.RECORDER.note_backend(self.backend, chosen_by_environment=backend is None)
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()

    def route(self, request: httpx.Request) -> Route:
        """The route of the request's key, made on first use and kept."""
        name = self.key if isinstance(self.key, str) else self.key(request)
        found = self._routes.get(name)
        if found is not None:
            return found
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError("key", f"the key function must return a non-empty string, got {name!r}")
        with self._lock:
            found = self._routes.get(name)
            if found is None:
                stack = Stack(name)
                stack.classifier = self.classifier
                stack.limit_backend = self.backend
                found = self._routes[name] = Route(self.backend.limiter(name), stack, self._make_retry(name))
        return found
