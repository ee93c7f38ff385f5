"""Deciding whether an error is a rate limit that a retry can fix.

This is the one place that knows how providers report rate limits.  GLM answers HTTP 429
both for its transient concurrency limit (``1302``) and for a permanent empty balance
(``1113``), so the business code in the body decides, never the HTTP status alone.  No SDK is
imported: errors are read through the attributes the SDKs happen to expose (``code``,
``status_code``, ``body``, ``json_data``, ``response``) and, as a last resort, their text.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._errors import GLMRateLimitException, KeyPausedError, RateLimitTimeout, RetryBudgetExhausted

__all__ = [
    "ARREARS_CODES",
    "DEFAULT_PERMANENT_CODES",
    "DEFAULT_RETRYABLE_CODES",
    "OVERLOAD_CODES",
    "QUOTA_CODES",
    "Classifier",
    "ErrorInfo",
    "reset_time",
]

#: Codes a retry can fix: GLM's concurrency/frequency limits and overloads, and the
#: rate-limit codes of OpenAI, Anthropic and Azure OpenAI (whose ``code`` is the string "429").
DEFAULT_RETRYABLE_CODES: Final = frozenset(
    {
        "1302",
        "1303",
        "1305",
        "1312",
        "rate_limit_exceeded",
        "rate_limit_error",
        "overloaded_error",
        "429",
    }
)

#: Codes no retry can fix: arrears, quota windows, auth, content filter, policy throttles.
DEFAULT_PERMANENT_CODES: Final = frozenset(
    {
        "1000",
        "1001",
        "1002",
        "1003",
        "1004",
        "1110",
        "1111",
        "1112",
        "1113",
        "1121",
        "1261",
        "1301",
        "1304",
        "1308",
        "1309",
        "1310",
        "1311",
        "1313",
        "1314",
        "1316",
        "1317",
        "1318",
        "1319",
        "1320",
        "1321",
        "insufficient_quota",
        "enforced_spend_limit_reached",
        "billing_hard_limit_reached",
    }
)

#: Codes that pause the key until a quota window resets: GLM's daily (1304), five-hour (1308)
#: and weekly or monthly (1310) windows.  Permanent: a retry before the reset cannot help.
QUOTA_CODES: Final = frozenset({"1304", "1308", "1310"})

#: Codes that say the account has no balance (GLM 1113, OpenAI's ``insufficient_quota`` and
#: billing limits): permanent until someone pays, so the key pauses and probes now and then.
ARREARS_CODES: Final = frozenset(
    {"1113", "insufficient_quota", "billing_hard_limit_reached", "enforced_spend_limit_reached"}
)

#: Codes that say the model, not the account, is overloaded (GLM 1305 and 1312, Anthropic's
#: ``overloaded_error``): retried with backoff, and the model's breaker opens.
OVERLOAD_CODES: Final = frozenset({"1305", "1312", "overloaded_error"})

Kind = Literal["rate_limit", "permanent", "guard_timeout", "other"]
Pause = Literal["quota", "arrears", "overload"]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error says about rate limiting.

    ``kind`` is ``"rate_limit"`` (retry, and cool down), ``"permanent"`` (never retry),
    ``"guard_timeout"`` (the guard's own refusal: ``max_wait`` ran out, the key is paused,
    the retry budget is spent; waiting again will not help) or ``"other"`` (not a rate-limit
    matter at all).  ``pause`` says when the key as a whole should stop sending: ``"quota"``
    (until ``resets_at``, Unix time, when the provider named it), ``"arrears"`` (both
    permanent) or ``"overload"`` (a rate limit of the model, not the account).
    """

    kind: Kind
    code: str | None = None
    status: int | None = None
    retry_after: float | None = None
    pause: Pause | None = None
    resets_at: float | None = None

    @property
    def is_rate_limit(self) -> bool:
        return self.kind == "rate_limit"


_OTHER: Final = ErrorInfo("other")

# "code": "1302" / 'code': '1302' / "code":1302, as JSON or as a Python dict repr.
_CODE_IN_TEXT: Final = re.compile(r"""["']code["']\s*:\s*["']?([A-Za-z0-9_]+)""")
_TYPE_IN_TEXT: Final = re.compile(r"""["']type["']\s*:\s*["']([A-Za-z0-9_]+)""")
# "Error code: 429 - {...}" (openai), "Error code: 429, with error text" (zhipuai), "429 {...}".
_STATUS_IN_TEXT: Final = re.compile(r"(?:^|Error code:?\s*|status(?:_code)?[=:]\s*)([1-5]\d\d)\b")
_GLM_CODE: Final = re.compile(r"^\d{4}$")
_HTTP_STATUS: Final = re.compile(r"^[1-5]\d\d$")
_MAX_TEXT: Final = 16_384  # longer bodies are not parsed as a whole
_MAX_CAUSE_DEPTH: Final = 8


class Classifier:
    """Classifies errors (and error dicts returned as results) with a configurable code set."""

    __slots__ = ("permanent_codes", "retryable_codes")

    def __init__(
        self,
        retryable_codes: frozenset[str] = DEFAULT_RETRYABLE_CODES,
        permanent_codes: frozenset[str] = DEFAULT_PERMANENT_CODES,
    ) -> None:
        self.retryable_codes = retryable_codes
        self.permanent_codes = permanent_codes

    def classify(self, error: BaseException) -> ErrorInfo:
        """Look at ``error`` and its ``__cause__`` chain; the first verdict that is not "other" wins."""
        seen: set[int] = set()
        current: BaseException | None = error
        for _ in range(_MAX_CAUSE_DEPTH):
            if current is None or id(current) in seen:
                break
            seen.add(id(current))
            info = self._classify_one(current)
            if info.kind != "other":
                return info
            current = current.__cause__
        return _OTHER

    def classify_result(self, result: object) -> ErrorInfo:
        """Classify an error dict returned as a value, e.g. ``{"error": {"code": "1302"}}``."""
        if not isinstance(result, Mapping) or "error" not in result:
            return _OTHER
        code, kind_hint = _code_and_type(result)
        status = _as_status(result.get("status_code", result.get("status")))
        info = self._decide(code, kind_hint, status, None)
        return dataclasses.replace(info, resets_at=reset_time(result)) if info.pause == "quota" else info

    def _classify_one(self, error: BaseException) -> ErrorInfo:
        if isinstance(error, (RateLimitTimeout, KeyPausedError, RetryBudgetExhausted)):
            return ErrorInfo("guard_timeout", error.code, None, None)
        if isinstance(error, GLMRateLimitException):
            return ErrorInfo("rate_limit", error.code, 429, _seconds_or_none(error.retry_after))

        code: str | None = None
        kind_hint: str | None = None
        status = _as_status(getattr(error, "status_code", None)) or _as_status(getattr(error, "status", None))

        # An HTTP status in ``code`` (litellm's "429", urllib's 429) is only a fallback: the
        # provider's business code in the body or text must win, or a 1113 sent as 429 is retried.
        generic_code: str | None = None
        raw_code = getattr(error, "code", None)
        if isinstance(raw_code, (str, int)) and not isinstance(raw_code, bool):
            text_code = str(raw_code).strip()
            if _HTTP_STATUS.match(text_code):
                status = status or int(text_code)
                if isinstance(raw_code, str):  # Azure OpenAI's own code for its rate limit is "429"
                    generic_code = text_code
            elif text_code:
                code = text_code
        raw_type = getattr(error, "type", None)
        if isinstance(raw_type, str):
            kind_hint = raw_type

        for attribute in ("body", "json_data"):
            data = _safe_getattr(error, attribute)
            if isinstance(data, (str, bytes)):
                data = _parse_json(data)
            if isinstance(data, Mapping):
                found_code, found_type = _code_and_type(data)
                code = code or found_code
                kind_hint = kind_hint or found_type

        response = _safe_getattr(error, "response")
        retry_after = None
        if response is not None:
            status = (
                status
                or _as_status(_safe_getattr(response, "status_code"))
                or _as_status(_safe_getattr(response, "status"))
            )
            retry_after = retry_after_from_headers(_safe_getattr(response, "headers"))
            if code is None:
                text = _response_text(response)
                if text:
                    parsed = _parse_json(text)
                    if isinstance(parsed, Mapping):
                        code, found_type = _code_and_type(parsed)
                        kind_hint = kind_hint or found_type
                    else:
                        code, kind_hint = _code_from_text(text, kind_hint)
        if retry_after is None:
            retry_after = retry_after_from_headers(_safe_getattr(error, "headers"))

        if code is None:
            text = _safe_str(error)
            code, kind_hint = _code_from_text(text, kind_hint)
            if status is None:
                match = _STATUS_IN_TEXT.search(text)
                if match:
                    status = int(match.group(1))
        code = code or generic_code
        info = self._decide(code, kind_hint, status, retry_after)
        if info.pause == "quota":
            info = dataclasses.replace(info, resets_at=_reset_time_of(error))
        return info

    def _decide(
        self, code: str | None, kind_hint: str | None, status: int | None, retry_after: float | None
    ) -> ErrorInfo:
        if code is not None:
            if code in self.retryable_codes:
                pause: Pause | None = "overload" if code in OVERLOAD_CODES else None
                return ErrorInfo("rate_limit", code, status, retry_after, pause)
            if code in self.permanent_codes:
                pause = "quota" if code in QUOTA_CODES else "arrears" if code in ARREARS_CODES else None
                return ErrorInfo("permanent", code, status, retry_after, pause)
            if _GLM_CODE.match(code):
                # Another GLM business code: its own meaning, not a rate limit.
                return ErrorInfo("other", code, status, retry_after)
        if kind_hint is not None:
            if kind_hint in self.permanent_codes:
                pause = "arrears" if kind_hint in ARREARS_CODES else None
                return ErrorInfo("permanent", kind_hint, status, retry_after, pause)
            if kind_hint in self.retryable_codes:
                pause = "overload" if kind_hint in OVERLOAD_CODES else None
                return ErrorInfo("rate_limit", code or kind_hint, status, retry_after, pause)
        if status == 529:  # Anthropic: overloaded
            return ErrorInfo("rate_limit", code, status, retry_after, "overload")
        if status == 429:
            return ErrorInfo("rate_limit", code, status, retry_after)
        if code is not None or status is not None or retry_after is not None:
            return ErrorInfo("other", code, status, retry_after)
        return _OTHER


# "您的限额将在 2026-12-05 08:00:00 重置" / "Your limit will reset at 2026-12-05 08:00:00"; an
# offset written after the time (``Z``, ``+08:00``) is the writer's word and is kept.
_RESET_IN_TEXT: Final = re.compile(
    r"(?:将在|reset at)\s*(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:?\d{2})?)"
)
_FLUSH_IN_TEXT: Final = re.compile(r"""["']next_flush_time["']\s*:\s*["']?([^"',}]+)""")
#: GLM writes reset times in China Standard Time, whatever the caller's time zone.
_CHINA: Final = datetime.timezone(datetime.timedelta(hours=8))
_MS_THRESHOLD: Final = 1e11  # a Unix time above this is in milliseconds (year 5138 in seconds)


def reset_time(found: object) -> float | None:
    """The quota reset a GLM error names, as Unix time; ``None`` if it names none.

    ``found`` is the error's text or its parsed body.  GLM writes the time in its message
    (``您的限额将在 {reset} 重置``) as ``YYYY-MM-DD HH:MM:SS`` in China Standard Time (UTC+8),
    or in a ``next_flush_time`` field (that string, or Unix seconds or milliseconds).  A time
    with its own offset keeps it; a body escaped to ASCII JSON is read as JSON.
    """
    if isinstance(found, Mapping):
        inner = found.get("error")
        for layer in (inner, found) if isinstance(inner, Mapping) else (found,):
            flush = _flush_time(layer.get("next_flush_time"))
            if flush is not None:
                return flush
            message = layer.get("message")
            if isinstance(message, str) and (when := reset_time(message)) is not None:
                return when
        return None
    if not isinstance(found, str):
        return None
    field = _FLUSH_IN_TEXT.search(found)
    if field is not None and (when := _flush_time(field.group(1).strip())) is not None:
        return when
    match = _RESET_IN_TEXT.search(found)
    if match is not None:
        return _china_time(match.group(1))
    start, end = found.find("{"), found.rfind("}")  # "\u5c06\u5728" is 将在 to a JSON parser only
    if 0 <= start < end and "\\u" in found and len(found) <= _MAX_TEXT:
        data = _parse_json(found[start : end + 1])
        return reset_time(data) if isinstance(data, Mapping) else None
    return None


def _flush_time(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return _china_time(value)
    if not isinstance(number, (int, float)) or not 0 < number < float("inf"):
        return None
    return float(number) / 1000.0 if number > _MS_THRESHOLD else float(number)


def _china_time(text: str) -> float | None:
    """``YYYY-MM-DD HH:MM:SS`` in China Standard Time, unless the text names its own offset."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return (when if when.tzinfo is not None else when.replace(tzinfo=_CHINA)).timestamp()


def _reset_time_of(error: BaseException) -> float | None:
    """Where an SDK's exception keeps the provider's words: its body, its response, its text."""
    for attribute in ("body", "json_data"):
        data = _safe_getattr(error, attribute)
        if isinstance(data, (str, bytes)):
            data = _parse_json(data)
        if (when := reset_time(data)) is not None:
            return when
    response = _safe_getattr(error, "response")
    if response is not None and (text := _response_text(response)) and (when := reset_time(text)) is not None:
        return when
    return reset_time(_safe_str(error)[:_MAX_TEXT])


def _safe_getattr(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises must never break classification
        return None


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:
        return ""


def _response_text(response: object) -> str | None:
    text = _safe_getattr(response, "text")
    if callable(text):  # aiohttp: text() is a coroutine function; not readable here
        return None
    if isinstance(text, str):
        return text
    content = _safe_getattr(response, "content")
    if isinstance(content, bytes):
        return content.decode("utf-8", "replace")
    return None


def _as_status(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def _parse_json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def _normalise_code(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        text = str(value).strip()
        return text or None
    return None


def _code_and_type(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Find ``code``/``type`` in an error object or in an envelope ``{"error": {...}}``."""
    inner = data.get("error")
    layers = [inner, data] if isinstance(inner, Mapping) else [data]
    code = kind = None
    for layer in layers:
        code = code or _normalise_code(layer.get("code"))
        details = layer.get("details")
        if code is None and isinstance(details, Mapping):
            code = _normalise_code(details.get("error_code"))
        found_type = layer.get("type")
        if kind is None and isinstance(found_type, str) and found_type != "error":
            kind = found_type
    return code, kind


def _code_from_text(text: str, kind_hint: str | None) -> tuple[str | None, str | None]:
    """Find a code in free text: JSON, a Python dict repr (openai's str(e)) or plain words."""
    start = text.find("{")
    if start != -1 and len(text) <= _MAX_TEXT:
        fragment = text[start : text.rfind("}") + 1]
        data = _parse_json(fragment)
        if data is None:
            try:
                data = ast.literal_eval(fragment)
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                data = None
        if isinstance(data, Mapping):
            code, found_type = _code_and_type(data)
            if code or found_type:
                return code, kind_hint or found_type
    match = _CODE_IN_TEXT.search(text)
    code = match.group(1) if match else None
    if kind_hint is None:
        type_match = _TYPE_IN_TEXT.search(text)
        kind_hint = type_match.group(1) if type_match else None
    return code, kind_hint


def _seconds_or_none(value: object) -> float | None:
    """A Retry-After someone else computed, if it is a usable wait: nan, inf or < 0 is no advice."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value < float("inf") else None


def retry_after_from_headers(headers: object) -> float | None:
    """Seconds from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), or ``None``."""
    if headers is None or not hasattr(headers, "get"):
        return None
    try:
        millis = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
        value = headers.get("retry-after") or headers.get("Retry-After")
    except Exception:
        return None
    if millis is not None:
        try:
            seconds = float(millis) / 1000.0
        except (TypeError, ValueError):
            seconds = -1.0
        if 0 <= seconds < float("inf"):
            return seconds
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            import email.utils  # deferred: only an HTTP-date Retry-After needs it

            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
        return max(0.0, seconds)
    if 0 <= seconds < float("inf"):
        return seconds
    return None


#: The classifier used when a decorator is not given its own code sets.
DEFAULT_CLASSIFIER: Final = Classifier()
