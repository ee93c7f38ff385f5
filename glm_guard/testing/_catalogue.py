"""GLM's error catalogue: the business codes the simulator can answer, with status and text.

One table serves validation (a fault must name a known code), the server's answers and
the command line's help, so a code is added in one place.
"""

# GLM's messages are Chinese with full-width punctuation; they must stay byte-exact.

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

__all__ = [
    "CHINA_STANDARD_TIME",
    "GLM_ERRORS",
    "QUOTA_CODES",
    "check_code",
    "error_body",
    "error_message",
    "error_status",
    "format_reset",
]

#: GLM writes reset times in Beijing time whatever the caller's zone.
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")

#: Codes of quota windows that reopen at a stated time: daily, five-hour, weekly/monthly.
QUOTA_CODES: frozenset[str] = frozenset({"1304", "1308", "1310"})

#: Business code -> (HTTP status, message) as GLM sends them (see GLM_API.md §1).
#: The codes are strings because GLM sends strings.
GLM_ERRORS: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "500": (500, "内部错误"),
        "1001": (401, "Header中未收到Authorization参数，无法进行身份验证。"),
        "1002": (401, "Authorization Token非法，请确认Authorization Token正确传递。"),
        "1003": (401, "Authorization Token已过期，请重新生成/获取。"),
        "1113": (429, "余额不足或无可用资源包,请充值。"),
        "1210": (400, "API 调用参数有误，请检查文档。"),
        "1211": (400, "模型不存在，请检查模型代码。"),
        "1214": (400, "参数非法。请检查文档。"),
        "1261": (400, "Prompt 超长"),
        "1301": (
            400,
            ("系统检测到输入或生成内容可能包含不安全或敏感内容，请您避免输入易产生敏感内容的提示语，感谢您的配合。"),
        ),
        "1302": (429, "您的账户已达到速率限制，请您控制请求频率"),
        "1304": (429, "该 API 已达今日调用次数限额，如有更多需求，请联系客服购买"),
        "1305": (429, "该模型当前访问量过大，请您稍后再试"),
        "1308": (429, "已达到 5 小时 的使用上限。您的限额将在 {reset} 重置。"),
        "1310": (429, "您已达到每周/每月使用上限，您的限额将在 {reset} 重置。"),
        "1312": (429, "该模型当前访问量过大，请您稍后再试，或切换其他模型如 {model_name} 等"),
    }
)


def check_code(code: str, what: str) -> str:
    """``code`` as a string, or a ValueError naming ``what`` and the known codes."""
    code = str(code)
    if code not in GLM_ERRORS:
        known = ", ".join(sorted(GLM_ERRORS, key=int))
        raise ValueError(f"{what}: unknown GLM error code {code!r} (known: {known})")
    return code


def error_status(code: str, overrides: Mapping[str, int] | None = None) -> int:
    """HTTP status for a business code, honouring per-code overrides (e.g. 1305 as 503)."""
    if overrides and code in overrides:
        return overrides[code]
    return GLM_ERRORS[code][0]


def format_reset(epoch_s: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in China Standard Time, as GLM writes a quota's reset time."""
    return datetime.fromtimestamp(epoch_s, CHINA_STANDARD_TIME).strftime("%Y-%m-%d %H:%M:%S")


def error_message(
    code: str,
    detail: str = "",
    *,
    reset: float | None = None,
    model_name: str | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """GLM's text for ``code``.

    Quota windows name their reset time (``reset``, epoch seconds; an hour from ``clock()``
    when not given, rounded up to a whole second so the text never names a moment before
    the real reset); 1312 names ``model_name`` (default glm-4-flash) as the model to switch to.
    """
    message = GLM_ERRORS[code][1]
    if "{reset}" in message:
        when = reset if reset is not None else math.ceil(clock() + 3600.0)
        message = message.replace("{reset}", format_reset(when))
    message = message.replace("{model_name}", model_name or "glm-4-flash")
    return f"{detail}{message}"


def error_body(code: str, message: str, *, next_flush_time: int | None = None) -> dict[str, Any]:
    """GLM's error envelope: ``{"error": {"code": "1302", "message": "..."}}``.

    ``next_flush_time`` (epoch milliseconds) is added to the error object when given.
    """
    error: dict[str, Any] = {"code": code, "message": message}
    if next_flush_time is not None:
        error["next_flush_time"] = next_flush_time
    return {"error": error}
