"""A transport's policy: the decorators' own keywords, validated by the decorators' own code.

``rate_limited`` and ``retry_on_1302`` each expose the function that validates and freezes
their policy; the transport calls both, so a bad value fails at construction naming its
parameter, exactly as it would on the decorator, and the two can never drift apart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple, Unpack, cast

from .. import _validate
from .._classify import DEFAULT_CLASSIFIER
from .._errors import ConfigurationError
from .._rate_limit import RateOptions, _Guard, limit_guard
from .._retry import BackoffOptions, _RetryPolicy, retry_policy
from .._stack import Stack
from ..backends import Limiter, get_backend
from ..monitoring import _recorder

if TYPE_CHECKING:
    import httpx

    from ..backends._base import Backend

__all__ = ["KeyFunction", "Policy", "PolicyOptions", "SharedOptions", "default_key"]

KeyFunction = Callable[["httpx.Request"], str]

#: Bodies longer than this are not parsed for their model: the key is then the host alone.
_MAX_BODY_FOR_MODEL: Final = 4 * 1024 * 1024


class SharedOptions(RateOptions, BackoffOptions, total=False):
    """The keywords a transport passes on unchanged to the decorators' own validation."""


class PolicyOptions(SharedOptions, total=False):
    """The keywords of ``rate_limited`` and ``retry_on_1302`` a transport takes; ``key`` may
    also be a function of the request."""

    calls: int | None
    period: float | None
    key: str | KeyFunction | None
    backend: str | Backend | None
    max_tries: int


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
        key: str | KeyFunction | None = None,
        backend: str | Backend | None = None,
        max_tries: int = 5,
        **shared: Unpack[SharedOptions],
    ) -> None:
        _validate.known_keywords("GuardedTransport", shared, SharedOptions.__optional_keys__)
        rate = {name: value for name, value in shared.items() if name in RateOptions.__optional_keys__}
        retry = {name: value for name, value in shared.items() if name in BackoffOptions.__optional_keys__}
        self.guard: _Guard = limit_guard(calls, period, **cast(RateOptions, rate))
        self._make_retry, classifier = retry_policy(max_tries, **cast(BackoffOptions, retry))
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
