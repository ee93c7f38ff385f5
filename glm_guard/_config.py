"""Configuration: read from the environment once, into a frozen object.

Nothing reads ``os.environ`` on the hot path: decorators ask :func:`get_settings` at
decoration time, which parses the environment the first time it is called and caches the
result.  :func:`reload_settings` re-reads it (tests, or after loading a ``.env`` file).
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from . import _validate
from ._auto_concurrency import AutoConcurrency
from ._errors import ConfigurationError
from ._redact import mask_url
from ._redis_url import REDIS_SCHEMES, check_redis_url

N = TypeVar("N", int, float)

__all__ = [
    "REDIS_SCHEMES",
    "Settings",
    "check_redis_url",
    "get_settings",
    "is_testing",
    "mask_url",
    "reload_settings",
    "set_testing",
]

DEFAULT_CALLS_PER_MINUTE = 50
DEFAULT_KEY_PREFIX = "glm_guard:"
DEFAULT_COOLDOWN_SECONDS = 1.0
DEFAULT_API_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"
DEFAULT_MODEL = "glm-4"
DEFAULT_MAX_TRIES = 5
DEFAULT_ARREARS_PAUSE_SECONDS = 300.0
DEFAULT_OVERLOAD_PAUSE_SECONDS = 30.0
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_REDIS_TIMEOUT = 0.5
DEFAULT_ALERT_1302_PER_HOUR = 1
DEFAULT_ALERT_MIN_SUCCESS_RATE = 0.995
_SECRETS = frozenset({"cache_secret", "api_key", "monitor_token"})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything glm_guard reads from the environment, parsed and validated.

    Build one with :meth:`from_env`; override fields with :func:`dataclasses.replace`.
    """

    max_calls_per_minute: int = DEFAULT_CALLS_PER_MINUTE
    """``GLM_API_MAX_CALLS_PER_MINUTE``: calls per 60 s when a decorator names no limit."""
    max_concurrency: int | AutoConcurrency | None = None
    """``GLM_API_MAX_CONCURRENCY``: calls in flight per key when a decorator names no limit;
    ``auto`` learns it from the provider, within ``GLM_GUARD_AUTO_CONCURRENCY_MIN`` /
    ``_MAX`` (default 1 / 64), starting at ``GLM_GUARD_AUTO_CONCURRENCY_INITIAL`` (default: the min)."""
    backend: str = "local"
    """``GLM_GUARD_BACKEND``: ``local``, ``redis``, or a backend URL."""
    redis_url: str | None = field(default=None, repr=False)
    """``REDIS_URL``: the Redis server used by the ``redis`` backend (may hold a password)."""
    key_prefix: str = DEFAULT_KEY_PREFIX
    """``GLM_GUARD_KEY_PREFIX``: prefix of every key the shared backends write."""
    default_cooldown: float = DEFAULT_COOLDOWN_SECONDS
    """``GLM_GUARD_DEFAULT_COOLDOWN``: pause after a rate-limit error that names no Retry-After."""
    arrears_pause: float = DEFAULT_ARREARS_PAUSE_SECONDS
    """``GLM_GUARD_ARREARS_PAUSE``: how long a key refuses calls after the account ran out of
    balance (1113), and the interval between probes until it answers again."""
    overload_pause: float = DEFAULT_OVERLOAD_PAUSE_SECONDS
    """``GLM_GUARD_OVERLOAD_PAUSE``: how long a model's breaker stays open after it said it is
    overloaded (1305, 1312), and the interval between probes until it answers again."""
    cache_secret: str = field(default="", repr=False)
    """``GLM_GUARD_CACHE_SECRET``: HMAC key that signs every shared cache entry with its key and deadline."""
    api_key: str = field(default="", repr=False)
    """``GLM_API_KEY`` (else ``ZHIPUAI_API_KEY``): the key ``get_llm_client()`` sends."""
    api_base_url: str = DEFAULT_API_BASE_URL
    """``GLM_API_BASE_URL``: where ``get_llm_client()`` posts ``/chat/completions``."""
    model: str = DEFAULT_MODEL
    """``GLM_API_MODEL``: the model ``get_llm_client()`` asks for when a call names none."""
    max_tries: int = DEFAULT_MAX_TRIES
    """``GLM_GUARD_MAX_TRIES``: attempts in all per ``get_llm_client()`` call (1: no retry)."""
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    """``GLM_API_TIMEOUT``: seconds ``get_llm_client()`` waits for one HTTP response."""
    on_backend_error: str = "local"
    """``GLM_GUARD_ON_BACKEND_ERROR``: ``local``, ``open`` or ``closed`` while Redis is unreachable."""
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
    """``GLM_GUARD_REDIS_TIMEOUT``: seconds any one Redis call may take before it counts as down."""
    expected_processes: int = 1
    """``GLM_GUARD_EXPECTED_PROCESSES``: processes sharing the limits, assumed while Redis cannot count them."""
    stats_enabled: bool = True
    """``GLM_GUARD_STATS``: record every guarded call for ``glm_guard.stats()`` (``0`` turns it off)."""
    monitor_token: str = field(default="", repr=False)
    """``GLM_GUARD_MONITOR_TOKEN``: bearer token the monitoring endpoints require (empty: none)."""
    alert_1302_per_hour: int = DEFAULT_ALERT_1302_PER_HOUR
    """``GLM_GUARD_ALERT_1302_PER_HOUR``: alert when a key sees more 1302s than this in the last hour."""
    alert_min_success_rate: float = DEFAULT_ALERT_MIN_SUCCESS_RATE
    """``GLM_GUARD_ALERT_MIN_SUCCESS_RATE``: alert when a key's success rate in the last hour is lower."""

    def __repr__(self) -> str:
        shown = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name in _SECRETS:
                value = "***" if value else ""
            elif isinstance(value, str) and "://" in value:  # REDIS_URL, a URL backend, the API base
                value = mask_url(value)
            shown.append(f"{name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse ``environ`` (default: ``os.environ``); invalid values name their variable."""
        env = os.environ if environ is None else environ
        backend = _text(env, "GLM_GUARD_BACKEND") or "local"
        redis_url = _text(env, "REDIS_URL")
        if redis_url is not None:
            check_redis_url(redis_url, "REDIS_URL")
        return cls(
            max_calls_per_minute=_positive_int(env, "GLM_API_MAX_CALLS_PER_MINUTE") or DEFAULT_CALLS_PER_MINUTE,
            max_concurrency=_concurrency(env, "GLM_API_MAX_CONCURRENCY"),
            backend=backend,
            redis_url=redis_url,
            key_prefix=_key_prefix(env, "GLM_GUARD_KEY_PREFIX"),
            default_cooldown=_non_negative_float(env, "GLM_GUARD_DEFAULT_COOLDOWN", DEFAULT_COOLDOWN_SECONDS),
            arrears_pause=_positive_float(env, "GLM_GUARD_ARREARS_PAUSE", DEFAULT_ARREARS_PAUSE_SECONDS),
            overload_pause=_positive_float(env, "GLM_GUARD_OVERLOAD_PAUSE", DEFAULT_OVERLOAD_PAUSE_SECONDS),
            cache_secret=env.get("GLM_GUARD_CACHE_SECRET", "").strip(),
            api_key=_text(env, "GLM_API_KEY") or _text(env, "ZHIPUAI_API_KEY") or "",
            api_base_url=_http_url(env, "GLM_API_BASE_URL") or DEFAULT_API_BASE_URL,
            model=_text(env, "GLM_API_MODEL") or DEFAULT_MODEL,
            max_tries=_positive_int(env, "GLM_GUARD_MAX_TRIES") or DEFAULT_MAX_TRIES,
            request_timeout=_positive_float(env, "GLM_API_TIMEOUT", DEFAULT_REQUEST_TIMEOUT),
            on_backend_error=_choice(env, "GLM_GUARD_ON_BACKEND_ERROR", ("local", "open", "closed")) or "local",
            redis_timeout=_redis_timeout(env, "GLM_GUARD_REDIS_TIMEOUT"),
            expected_processes=_positive_int(env, "GLM_GUARD_EXPECTED_PROCESSES") or 1,
            stats_enabled=_switch(env, "GLM_GUARD_STATS", True),
            monitor_token=_text(env, "GLM_GUARD_MONITOR_TOKEN") or "",
            alert_1302_per_hour=_count(env, "GLM_GUARD_ALERT_1302_PER_HOUR", DEFAULT_ALERT_1302_PER_HOUR),
            alert_min_success_rate=_fraction(env, "GLM_GUARD_ALERT_MIN_SUCCESS_RATE", DEFAULT_ALERT_MIN_SUCCESS_RATE),
        )


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _parsed(
    env: Mapping[str, str], name: str, convert: Callable[[str], N], valid: Callable[[N], bool], expected: str
) -> N | None:
    """The variable converted and checked, ``None`` when unset; the error names it and the rule."""
    raw = _text(env, name)
    if raw is None:
        return None
    try:
        value = convert(raw)
    except ValueError:
        raise ConfigurationError(name, f"must be {expected}, got {raw!r}") from None
    if not valid(value):
        raise ConfigurationError(name, f"must be {expected}, got {raw!r}")
    return value


def _concurrency(env: Mapping[str, str], name: str) -> int | AutoConcurrency | None:
    """A number, or ``auto`` with its bounds from their own variables (each named in its error)."""
    if env.get(name, "").strip().lower() != "auto":
        return _positive_int(env, name)
    bounds = {
        field: _positive_int(env, f"GLM_GUARD_AUTO_CONCURRENCY_{field.upper()}") for field in ("min", "max", "initial")
    }
    try:
        return AutoConcurrency(**{field: value for field, value in bounds.items() if value is not None})
    except ConfigurationError as error:
        raise ConfigurationError(f"GLM_GUARD_AUTO_CONCURRENCY_{error.name.upper()}", error.problem) from None


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    return _parsed(env, name, int, lambda v: v > 0, "a positive integer")


_SECONDS = "a number of seconds {}, at most ten years"


def _non_negative_float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _parsed(env, name, float, lambda v: 0 <= v <= _validate.MAX_SECONDS, _SECONDS.format(">= 0"))
    return default if value is None else value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _parsed(env, name, float, lambda v: 0 < v <= _validate.MAX_SECONDS, _SECONDS.format("> 0"))
    return default if value is None else value


def _key_prefix(env: Mapping[str, str], name: str) -> str:
    raw = _text(env, name)
    return DEFAULT_KEY_PREFIX if raw is None else _validate.key_prefix(name, raw)


def _redis_timeout(env: Mapping[str, str], name: str) -> float:
    low, high = _validate.REDIS_TIMEOUT_RANGE
    value = _parsed(env, name, float, lambda v: low <= v <= high, f"a number of seconds from {low:g} to {high:g}")
    return DEFAULT_REDIS_TIMEOUT if value is None else value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = _text(env, name)
    if raw is None:
        return None
    if raw.lower() not in choices:
        raise ConfigurationError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw.lower()


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(name, f"must be 1 or 0 (or true/false, yes/no, on/off), got {raw!r}")


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    value = _parsed(env, name, int, lambda v: v >= 0, "an integer >= 0")
    return default if value is None else value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _parsed(env, name, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
    return default if value is None else value


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    raw = _text(env, name)
    if raw is None:
        return None
    try:
        parts = urllib.parse.urlsplit(raw)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigurationError(name, f"must be an http:// or https:// URL, got {mask_url(raw)!r}")
    return raw.rstrip("/")


_settings_lock = threading.Lock()
_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, parsed from the environment on first use."""
    global _settings
    current = _settings
    if current is None:
        with _settings_lock:
            if _settings is None:
                _settings = Settings.from_env()
            current = _settings
    return current


def reload_settings(settings: Settings | None = None) -> Settings:
    """Re-read the environment (or install ``settings``) for decorators applied from now on."""
    global _settings
    new = Settings.from_env() if settings is None else settings
    with _settings_lock:
        _settings = new
    return new


class _TestingState:
    """Switches for users' own tests; read on every call, so kept to two plain attributes."""

    __slots__ = ("active", "attempts")

    def __init__(self) -> None:
        self.active = False
        self.attempts: int | None = None


TESTING = _TestingState()


def is_testing() -> bool:
    """Whether :func:`set_testing` has turned waits and backoff sleeps off."""
    return TESTING.active


def set_testing(testing: bool = True, *, attempts: int | None = None) -> _TestingContext:
    """Turn waiting off for tests: no permit waits, no backoff sleeps, no cooldown pauses.

    Limits are not enforced while testing is on, retries happen back to back, and
    ``attempts`` (if given) caps every ``retry_on_1302`` at that many attempts.  Caching and
    fallbacks behave as in production, so tests still see them.  Use it as a plain call or as
    a context manager that restores the previous state::

        with glm_guard.set_testing(True, attempts=2):
            ...
    """
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
        raise ConfigurationError("attempts", f"must be a positive integer or None, got {attempts!r}")
    previous = (TESTING.active, TESTING.attempts)
    TESTING.active = bool(testing)
    TESTING.attempts = attempts if testing else None
    return _TestingContext(*previous)


class _TestingContext:
    """Returned by :func:`set_testing`; as a context manager it restores the earlier state."""

    __slots__ = ("_active", "_attempts")

    def __init__(self, active: bool, attempts: int | None) -> None:
        self._active = active
        self._attempts = attempts

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        TESTING.active, TESTING.attempts = self._active, self._attempts
