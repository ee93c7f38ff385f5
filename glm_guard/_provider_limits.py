"""What a provider's rate-limit headers say about the next call: how long the key should wait.

OpenAI and Azure OpenAI send ``x-ratelimit-remaining-requests`` / ``-tokens`` with
``x-ratelimit-reset-requests`` / ``-tokens`` (durations such as ``6m0s`` or ``20ms``);
Anthropic sends ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining``
with ``-reset`` (an RFC 3339 time).  When what is left cannot take another call like this one,
the key cools down until the reset, in every process, so the next call waits instead of
drawing a 429.  Under a token budget, what the provider says is left of its tokens also lowers
the budget until the reset (``tokens_left``): tokens spent outside the guard count too.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_RESET_SECONDS", "headers_of", "provider_wait", "tokens_left"]

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
#: (what is counted, remaining header, reset header); ``None`` remaining: requests (one per call).
_OPENAI: Final = (
    ("requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
)
#: A reset further off than this is not believed (a provider's token count refills within minutes).
MAX_RESET_SECONDS: Final = 600.0
_ANTHROPIC: Final = tuple(
    (kind, f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset")
    for kind in ("requests", "tokens", "input-tokens", "output-tokens")
)


def headers_of(answer: object) -> Mapping[str, str] | None:
    """The response headers an answer carries (an ``httpx.Response``, an SDK's raw response, or a
    dict with ``headers``), with lower-case names; ``None`` when it carries none."""
    headers: Any = answer.get("headers") if isinstance(answer, Mapping) else getattr(answer, "headers", None)
    if headers is None or not hasattr(headers, "items"):
        return None
    try:
        return {str(name).lower(): str(value) for name, value in headers.items()}
    except Exception:  # an object that only looks like headers
        return None


def _seconds_until(value: str | None, now: float) -> float | None:
    """A reset as seconds from ``now``: an OpenAI duration (``1m30.5s``, ``20ms``), a number of
    seconds, or an RFC 3339 time (Anthropic)."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if parts and "".join(number + unit for number, unit in parts) == text:
        return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - now, 0.0)


def _whole(value: str | None) -> int | None:
    try:
        return None if value is None else int(float(value))
    except (ValueError, OverflowError):
        return None


def provider_wait(
    headers: Mapping[str, str], tokens_next: int, unknown_reset: float, now: float | None = None
) -> float:
    """Seconds the key should wait before its next call (0: go on), from the provider's headers.

    Requests run out when none is left; tokens when fewer are left than ``tokens_next`` (this
    call's reservation, taken as the size of the next; 1 without a token budget).  A count that
    ran out with no reset named waits ``unknown_reset``.
    """
    now = time.time() if now is None else now
    wait = 0.0
    for kind, remaining_name, reset_name in (*_OPENAI, *_ANTHROPIC):
        remaining = _whole(headers.get(remaining_name))
        if remaining is None:
            continue
        needed = 1 if kind == "requests" else max(tokens_next, 1)
        if remaining >= needed:
            continue
        reset = _seconds_until(headers.get(reset_name), now)
        wait = max(wait, unknown_reset if reset is None else reset)
    return wait if math.isfinite(wait) else 0.0


def tokens_left(headers: Mapping[str, str], now: float | None = None, side: str = "all") -> tuple[int, float] | None:
    """``(tokens left, seconds until the reset)`` by the provider's count, the smallest that applies
    (Anthropic counts input and output tokens apart; a budget of one ``side`` follows that side's
    count and the overall one); ``None`` when no token count names both.

    Values that are not whole counts, negative, or a reset not within ``MAX_RESET_SECONDS``
    are ignored: a header is a hint from the network, never trusted to hold a key for long.
    """
    now = time.time() if now is None else now
    found: tuple[int, float] | None = None
    for kind, remaining_name, reset_name in (*_OPENAI, *_ANTHROPIC):
        if kind == "requests" or (side != "all" and kind not in ("tokens", f"{side}-tokens")):
            continue
        remaining = _whole(headers.get(remaining_name))
        reset = _seconds_until(headers.get(reset_name), now)
        if remaining is None or remaining < 0 or reset is None or not 0 < reset <= MAX_RESET_SECONDS:
            continue
        if found is None or (remaining, -reset) < (found[0], -found[1]):
            found = remaining, reset
    return found
