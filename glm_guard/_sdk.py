"""SDK clients retry on their own; under ``@retry_on_1302`` that multiplies attempts.

zhipuai retries a 429 three times by default and openai twice, with their own short
backoff, inside one guarded attempt: ``retry_on_1302(max_tries=5)`` around a default
zhipuai client can send 20 requests for one call, and a ``1113`` (arrears) is resent
before the guard ever sees it.  The guard cannot see the SDK client in general, so it
looks where it usually is: an argument of the retried call, or an attribute of its
bound ``self``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["SDKRetryWarning", "sdk_retries_off", "sdk_retry_warning"]

T = TypeVar("T")

_warned: set[type] = set()
_warned_lock = threading.Lock()


class SDKRetryWarning(UserWarning):
    """A call retried by ``retry_on_1302`` uses an SDK client whose own retries are on."""


def sdk_retries_off(client: T) -> T:
    """``client`` with the SDK's own retries off, so ``retry_on_1302`` alone decides.

    openai-style clients (``with_options``) are copied with ``max_retries=0``, sharing the
    original's connection pool; clients with only a ``max_retries`` attribute (zhipuai)
    are changed in place and returned, and so are langchain-openai's ``ChatOpenAI`` (its
    openai clients replaced by such copies) and pydantic-ai's ``Agent`` (``max_retries=0`` in
    its ``model_settings``).  For what it cannot change, the ``TypeError`` says what to do;
    ``glm_guard.http`` guards any of them instead (docs/http.md).
    """
    with_options = getattr(client, "with_options", None)
    if callable(with_options):
        copy: T = with_options(max_retries=0)
        return copy
    if isinstance(_own_retries(client, require_api=False), int):
        client.max_retries = 0  # type: ignore[attr-defined]
        return client
    if callable(getattr(getattr(client, "root_client", None), "with_options", None)):
        return _chat_model_retries_off(client)
    if hasattr(client, "model_settings") and callable(getattr(client, "run", None)):
        return _agent_retries_off(client)
    raise TypeError(
        f"sdk_retries_off: {type(client).__name__} has neither with_options() nor max_retries; build it on an "
        "SDK client passed through sdk_retries_off() (pydantic-ai: an Agent, or a provider given "
        "openai_client=sdk_retries_off(...)), or guard its httpx client with glm_guard.http"
    )


def _chat_model_retries_off(chat: T) -> T:
    """langchain-openai: the openai clients it built, swapped for copies without retries."""
    for root, resource in (("root_client", "client"), ("root_async_client", "async_client")):
        original = getattr(chat, root, None)
        if original is not None:
            quiet = original.with_options(max_retries=0)
            setattr(chat, root, quiet)
            setattr(chat, resource, quiet.chat.completions)
    chat.max_retries = 0  # type: ignore[attr-defined]
    return chat


def _agent_retries_off(agent: T) -> T:
    """pydantic-ai: ``max_retries`` is a model setting the provider's client obeys per request."""
    settings = agent.model_settings  # type: ignore[attr-defined]
    if settings is not None and not isinstance(settings, Mapping):
        raise TypeError(
            f"sdk_retries_off: {type(agent).__name__}.model_settings is computed; add max_retries=0 to what it returns"
        )
    agent.model_settings = {**(settings or {}), "max_retries": 0}  # type: ignore[attr-defined]
    return agent


def sdk_retry_warning(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str | None = None) -> None:
    """Warn once per client type if a retried call's arguments hold an SDK client that retries.

    Looks at each argument and, one level down, at each argument's attributes (a
    ``self.client`` on the bound instance).  Duck-typed: an object with an integer
    ``max_retries > 0`` and a ``chat`` attribute (openai, zhipuai, zai and their kin).
    """
    for candidate in _candidates(args, kwargs):
        retries = _own_retries(candidate, require_api=True)
        if not retries:
            continue
        kind = type(candidate)
        with _warned_lock:
            if kind in _warned:
                return
            _warned.add(kind)
        where = name or "a function"
        warnings.warn(
            f"glm_guard: {where} is retried by retry_on_1302, but the {kind.__module__}.{kind.__qualname__} it "
            f"calls retries on its own too (max_retries={retries}), so each guarded attempt can send "
            f"{retries + 1} requests. Create the client with max_retries=0, or use glm_guard.sdk_retries_off(client).",
            SDKRetryWarning,
            stacklevel=3,
        )
        return


def _candidates(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Iterator[Any]:
    for value in (*args, *kwargs.values()):
        yield value
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict) and not isinstance(value, type):
            yield from list(attributes.values())


def _own_retries(obj: object, *, require_api: bool) -> int | None:
    """``obj.max_retries`` if it is an int (and ``obj`` looks like an SDK client), else ``None``."""
    try:
        retries = getattr(obj, "max_retries", None)
        if isinstance(retries, bool) or not isinstance(retries, int):
            return None
        if require_api and not hasattr(obj, "chat"):
            return None
    except Exception:  # a property that raises must never break the call
        return None
    return retries
