"""Which errors pause a whole key (in every process), for how long, and what a refused caller gets.

Apart from ``@rate_limited`` itself because it is a table of GLM's error kinds, not admission.
"""

from __future__ import annotations

import re
import time
from typing import Final

from ._classify import ErrorInfo
from ._errors import AccountInArrears, KeyPausedError, ModelOverloaded, QuotaExhausted
from .backends._pauses import LONGEST_PAUSE_SECONDS, KeyPaused

__all__ = ["QUOTA_PAUSE_WITHOUT_RESET_SECONDS", "QUOTA_PROBE_SECONDS", "pause_of", "refusal"]

#: A quota error that names no reset time pauses the key this long, then a probe asks again.
QUOTA_PAUSE_WITHOUT_RESET_SECONDS: Final = 900.0
#: After a quota window's reset, a probe every this many seconds until one is answered.
QUOTA_PROBE_SECONDS: Final = 60.0
_CODE_IN_REASON: Final = re.compile(r"^[A-Za-z0-9_]{1,40}$")


def pause_of(info: ErrorInfo, pauses: dict[str, float]) -> tuple[str, float, float] | None:
    """``(reason, seconds, probe_every)`` for an error that pauses the whole key, else ``None``."""
    if info.pause is None:
        return None
    reason = info.pause if info.code is None or not _CODE_IN_REASON.match(info.code) else f"{info.pause}:{info.code}"
    if info.pause != "quota":
        return reason, pauses[info.pause], pauses[info.pause]
    if info.resets_at is None:
        return reason, QUOTA_PAUSE_WITHOUT_RESET_SECONDS, QUOTA_PROBE_SECONDS
    seconds = min(max(info.resets_at - time.time(), 1.0), LONGEST_PAUSE_SECONDS)
    return reason, seconds, QUOTA_PROBE_SECONDS


def refusal(paused: KeyPaused) -> KeyPausedError:
    """The public error for a call refused by a pause: which one depends on what paused the key."""
    kind, _, code = paused.reason.partition(":")
    retry_at = time.time() + paused.seconds_left
    if kind == "quota":
        return QuotaExhausted(paused.key, code or None, None, retry_at)
    if kind == "arrears":
        return AccountInArrears(paused.key, code or None, retry_at)
    return ModelOverloaded(paused.key, code or None, retry_at)
