"""Rate-limit detection: every shape a GLM (or other provider's) error arrives in."""

from __future__ import annotations

import datetime
import email.utils
import json
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from glm_guard import Classifier, GLMRateLimitException, RateLimitTimeout, retry_on_1302, set_testing
from glm_guard._classify import DEFAULT_CLASSIFIER, reset_time, retry_after_from_headers
from glm_guard.testing import run_simulator

from .helpers import SEED_1113, SEED_1302, ErrorWithText

REQUEST = httpx.Request("POST", "http://127.0.0.1:1/api/paas/v4/chat/completions")


def glm_body(code: str | int, message: str = "m") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers, request=REQUEST)


def openai_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Exception:
    import openai

    resp = response(status, body, headers)
    inner = body.get("error", body)
    if status == 429:
        return openai.RateLimitError(f"Error code: {status} - {body}", response=resp, body=inner)
    if status == 400:
        return openai.BadRequestError(f"Error code: {status} - {body}", response=resp, body=inner)
    return openai.APIStatusError(f"Error code: {status} - {body}", response=resp, body=inner)


def zhipuai_error(status: int, body: dict[str, Any]) -> Exception:
    import zhipuai

    resp = response(status, body)
    cls = {429: zhipuai.APIReachLimitError, 400: zhipuai.APIRequestFailedError}.get(status, zhipuai.APIStatusError)
    return cls(f"Error code: {status}, with error text {resp.text}", response=resp)


def kind(error: BaseException) -> str:
    return DEFAULT_CLASSIFIER.classify(error).kind


@pytest.mark.parametrize("code", ["1302", "1303", "1305", "1312"])
def test_openai_rate_limit_error_with_retryable_glm_code(code: str) -> None:
    info = DEFAULT_CLASSIFIER.classify(openai_error(429, glm_body(code)))
    assert (info.kind, info.code, info.status) == ("rate_limit", code, 429)


@pytest.mark.parametrize("code", ["1113", "1304", "1308", "1310", "1301", "1002"])
def test_openai_error_with_permanent_glm_code_sent_as_429(code: str) -> None:
    assert kind(openai_error(429, glm_body(code))) == "permanent"


def test_zhipuai_reach_limit_error_has_its_code_only_in_the_response_text() -> None:
    error = zhipuai_error(429, glm_body("1302", "您的账户已达到速率限制，请您控制请求频率"))
    assert not hasattr(error, "code")
    info = DEFAULT_CLASSIFIER.classify(error)
    assert (info.kind, info.code) == ("rate_limit", "1302")
    assert kind(zhipuai_error(429, glm_body("1113"))) == "permanent"


def test_zhipuai_stream_error_carries_json_data() -> None:
    import zhipuai

    error = zhipuai.APIResponseError("stream failed", request=REQUEST, json_data={"code": "1302", "message": "x"})
    assert kind(error) == "rate_limit"


def test_httpx_status_error() -> None:
    resp = response(429, glm_body("1302"))
    error = httpx.HTTPStatusError("429 Too Many Requests", request=REQUEST, response=resp)
    assert kind(error) == "rate_limit"
    resp = response(429, glm_body("1113"))
    assert kind(httpx.HTTPStatusError("429", request=REQUEST, response=resp)) == "permanent"


def test_requests_http_error() -> None:
    import requests

    resp = requests.Response()
    resp.status_code = 429
    resp._content = b'{"error":{"code":"1302","message":"x"}}'
    resp.headers["Retry-After"] = "7"
    info = DEFAULT_CLASSIFIER.classify(requests.HTTPError("429 Client Error", response=resp))
    assert (info.kind, info.code, info.retry_after) == ("rate_limit", "1302", 7.0)


def test_the_seeds_plain_message_text() -> None:
    assert DEFAULT_CLASSIFIER.classify(ErrorWithText(SEED_1302)).code == "1302"
    assert kind(ErrorWithText(SEED_1302)) == "rate_limit"
    assert kind(ErrorWithText(SEED_1113)) == "permanent"


def test_openai_style_python_repr_text() -> None:
    text = "Error code: 429 - {'error': {'code': '1302', 'message': 'Rate limit reached for requests'}}"
    assert kind(RuntimeError(text)) == "rate_limit"


def test_integer_code_is_normalised() -> None:
    class Odd(Exception):
        code = 1302

    assert DEFAULT_CLASSIFIER.classify(Odd()).code == "1302"
    assert kind(ErrorWithText('{"error":{"code":1113}}')) == "permanent"


def test_cause_chain_is_searched() -> None:
    try:
        try:
            raise ErrorWithText(SEED_1302)
        except ErrorWithText as inner:
            raise RuntimeError("LLM call failed") from inner
    except RuntimeError as outer:
        assert kind(outer) == "rate_limit"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, {"error": {"code": "rate_limit_exceeded", "message": "Rate limit reached"}}, "rate_limit"),
        (429, {"error": {"code": "insufficient_quota", "message": "quota"}}, "permanent"),
        (429, {"error": {"code": None, "type": "insufficient_quota", "message": "quota"}}, "permanent"),
        (429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, "rate_limit"),
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}}, "rate_limit"),
        (429, {"error": {"code": "429", "message": "Requests ... Please retry after 3 seconds"}}, "rate_limit"),
        (
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "code": "1113", "message": "balance"}},
            "permanent",
        ),
        (429, {"message": "Too Many Requests"}, "rate_limit"),
        (400, {"error": {"code": "1214", "message": "bad parameter"}}, "other"),
        (500, {"error": {"code": "500", "message": "internal"}}, "other"),
    ],
)
def test_other_providers(status: int, body: dict[str, Any], expected: str) -> None:
    resp = response(status, body)
    assert kind(httpx.HTTPStatusError(str(status), request=REQUEST, response=resp)) == expected


def test_errors_that_are_not_about_rate_limits() -> None:
    assert kind(ValueError("boom")) == "other"
    assert kind(KeyError("code")) == "other"
    assert kind(TimeoutError()) == "other"


def test_our_own_exceptions() -> None:
    assert kind(GLMRateLimitException(code="1302")) == "rate_limit"
    assert kind(RateLimitTimeout("k", 1.0, 5.0)) == "guard_timeout"


def test_error_dict_returned_as_a_result() -> None:
    assert DEFAULT_CLASSIFIER.classify_result({"error": {"code": "1302", "message": "x"}}).kind == "rate_limit"
    assert DEFAULT_CLASSIFIER.classify_result({"error": {"code": "1113"}}).kind == "permanent"
    assert DEFAULT_CLASSIFIER.classify_result({"choices": []}).kind == "other"
    assert DEFAULT_CLASSIFIER.classify_result("1302").kind == "other"


def test_the_code_sets_are_configurable() -> None:
    custom = Classifier(retryable_codes=frozenset({"1113"}), permanent_codes=frozenset({"1302"}))
    assert custom.classify(ErrorWithText(SEED_1113)).kind == "rate_limit"
    assert custom.classify(ErrorWithText(SEED_1302)).kind == "permanent"


def test_a_raising_property_never_breaks_classification() -> None:
    class Hostile(Exception):
        @property
        def response(self) -> object:
            raise RuntimeError("no")

    assert kind(Hostile(SEED_1302)) == "rate_limit"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-4"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_from_headers(httpx.Headers(headers)) == expected


def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = retry_after_from_headers(httpx.Headers({"retry-after": when}))
    assert seconds is not None and 27 <= seconds <= 31


def test_retry_after_from_an_sdk_error_response() -> None:
    info = DEFAULT_CLASSIFIER.classify(openai_error(429, glm_body("1302"), {"retry-after": "4"}))
    assert info.retry_after == 4.0


# -- litellm: ``code`` is the generic "429", the GLM business code is in ``body`` or the text --


@pytest.fixture(scope="module")
def litellm() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        # Otherwise importing litellm tries to download a price list over the network.
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        patch.setattr(litellm, "suppress_debug_info", True)
        yield litellm


@pytest.mark.parametrize(("code", "expected"), [("1113", "permanent"), ("1302", "rate_limit"), ("1308", "permanent")])
def test_litellm_business_code_in_body_wins_over_its_generic_429(litellm: ModuleType, code: str, expected: str) -> None:
    body = {"code": code, "message": "m"}
    error = litellm.RateLimitError(message="OpenAIException - m", llm_provider="openai", model="glm-4.6", body=body)
    assert (error.code, error.status_code) == ("429", 429)  # the shape the classifier must see past
    info = DEFAULT_CLASSIFIER.classify(error)
    assert (info.kind, info.code, info.status) == (expected, code, 429)


def test_litellm_business_code_only_in_the_message(litellm: ModuleType) -> None:
    error = litellm.RateLimitError(
        message='ZaiException - {"error":{"code":"1113","message":"balance"}}', llm_provider="zai", model="glm-4.6"
    )
    assert error.body is None
    info = DEFAULT_CLASSIFIER.classify(error)
    assert (info.kind, info.code) == ("permanent", "1113")


def test_litellm_api_error_with_a_body_code(litellm: ModuleType) -> None:
    error = litellm.APIError(
        status_code=429, message="m", llm_provider="openai", model="glm-4.6", body={"code": "1113", "message": "m"}
    )
    assert DEFAULT_CLASSIFIER.classify(error).kind == "permanent"


def test_a_generic_429_code_alone_is_still_a_rate_limit(litellm: ModuleType) -> None:
    error = litellm.RateLimitError(message="slow down", llm_provider="openai", model="gpt-4o")
    info = DEFAULT_CLASSIFIER.classify(error)
    assert (info.kind, info.code, info.status) == ("rate_limit", "429", 429)


# litellm's request types trip a pydantic warning that is no concern of ours.
@pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")
def test_litellm_through_the_simulator_never_retries_arrears(litellm: ModuleType) -> None:
    import openai

    with (
        run_simulator(latency=0) as sim,
        set_testing(True),
        # Our own client, closed here; litellm would otherwise cache one with an open socket.
        openai.OpenAI(api_key="test-key", base_url=sim.base_url, max_retries=0) as client,
    ):

        @retry_on_1302(max_tries=5)
        def ask() -> Any:
            return litellm.completion(
                model="openai/glm-4.6",
                messages=[{"role": "user", "content": "hi"}],
                client=client,
                max_retries=0,
            )

        sim.force_next("1113")
        with pytest.raises(litellm.RateLimitError) as raised:
            ask()
        assert DEFAULT_CLASSIFIER.classify(raised.value).code == "1113"
        assert sim.stats.total_requests == 1  # one attempt: arrears are permanent

        sim.force_next("1302", 2)
        assert ask().choices[0].message.content.startswith("[glm-sim")
        assert sim.stats.rejected.get("1302") == 2
        assert sim.stats.total_requests == 4


# -- quota reset times, wherever the provider puts them ----------------------------------------

RESET_UTC = 1796428800.0  # 2026-12-05T00:00:00Z, which GLM writes as 2026-12-05 08:00:00 (UTC+8)
QUOTA_MESSAGE = "已达到 5 小时 的使用上限。您的限额将在 2026-12-05 08:00:00 重置。"


def test_the_expected_reset_is_midnight_utc() -> None:
    assert datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC).timestamp() == RESET_UTC


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_zhipuai_quota_error_carries_its_reset_even_in_ascii_escaped_json(ensure_ascii: bool) -> None:
    # A proxy or server that escapes non-ASCII sends 将在 as \u5c06\u5728; zhipuai keeps only the raw text.
    text = json.dumps(glm_body("1308", QUOTA_MESSAGE), ensure_ascii=ensure_ascii)
    resp = httpx.Response(429, content=text.encode(), headers={"content-type": "application/json"}, request=REQUEST)
    import zhipuai

    error = zhipuai.APIReachLimitError(f"Error code: 429, with error text {text}", response=resp)
    info = DEFAULT_CLASSIFIER.classify(error)
    assert (info.kind, info.pause, info.resets_at) == ("permanent", "quota", RESET_UTC)


@pytest.mark.parametrize(
    "found",
    [
        "Your limit will reset at 2026-12-05T00:00:00Z",
        "Your limit will reset at 2026-12-05 03:00:00+03:00",
        {"next_flush_time": "2026-12-05T00:00:00Z"},
        {"error": {"code": "1310", "next_flush_time": "2026-12-05T08:00:00+0800"}},
    ],
)
def test_a_reset_time_with_its_own_offset_keeps_it(found: object) -> None:
    assert reset_time(found) == RESET_UTC


def test_an_error_dict_returned_as_a_value_carries_its_reset() -> None:
    info = DEFAULT_CLASSIFIER.classify_result(glm_body("1308", QUOTA_MESSAGE))
    assert (info.kind, info.pause, info.resets_at) == ("permanent", "quota", RESET_UTC)
    flushed = DEFAULT_CLASSIFIER.classify_result({"error": {"code": "1310", "next_flush_time": RESET_UTC * 1000}})
    assert flushed.resets_at == RESET_UTC


@pytest.mark.parametrize(
    "garbage",
    [
        "您的限额将在 2026-12-05 08:00:00+99:00 重置",
        {"next_flush_time": float("nan")},
        {"next_flush_time": -5},
        {"next_flush_time": True},
        {"error": {"next_flush_time": "2026-02-30 08:00:00"}},
        b"\xe5\xb0\x86\xe5\x9c\xa8",
    ],
)
def test_a_garbled_reset_is_none(garbage: object) -> None:
    assert reset_time(garbage) is None
