"""Events: one typed record per attempt, wait, retry, cache lookup, fallback and call."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import glm_guard
from glm_guard import (
    AttemptEvent,
    AutoConcurrency,
    CacheEvent,
    CallEvent,
    FallbackEvent,
    GuardEvent,
    LimitChanged,
    RetryEvent,
    WaitEvent,
    cached_response,
    fallback,
    rate_limited,
    retry_on_1302,
)
from glm_guard.backends._local import LocalBackend
from glm_guard.monitoring import LoggingSubscriber
from glm_guard.monitoring._events import HUB
from glm_guard.monitoring._recorder import RECORDER

from .helpers import SEED_1302, ErrorWithText

PROMPT = "请解释量子纠缠"  # must never reach an event, a log line or a metric


@pytest.fixture(autouse=True)
def fresh_stats(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    RECORDER.stop(join=True)
    monkeypatch.setattr(RECORDER, "start", lambda: None)
    RECORDER.reset()
    RECORDER.set_recording(True)
    yield
    RECORDER.reset()
    RECORDER.set_recording(True)


@pytest.fixture
def events() -> Iterator[list[GuardEvent]]:
    seen: list[GuardEvent] = []
    unsubscribe = glm_guard.subscribe(seen.append)
    yield seen
    unsubscribe()


def make_stack(backend: LocalBackend, failures: list[int]) -> Any:
    @cached_response(ttl=60, backend=backend)
    @fallback("busy")
    @retry_on_1302(max_tries=2, base_delay=0, max_delay=0)
    @rate_limited(100, 1.0, key="glm-4", backend=backend, cooldown=0)
    def ask(question: str) -> dict[str, Any]:
        if failures[0] > 0:
            failures[0] -= 1
            raise ErrorWithText(SEED_1302)
        return {"answer": len(question), "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}}

    return ask


def test_a_stack_reports_each_step_in_order(events: list[GuardEvent], local_backend: LocalBackend) -> None:
    ask = make_stack(local_backend, [1])
    ask(PROMPT)
    ask(PROMPT)
    kinds = [type(event).__name__ for event in events]
    assert kinds == [
        "CacheEvent",  # miss
        "WaitEvent",
        "AttemptEvent",  # 1302
        "RetryEvent",
        "WaitEvent",
        "AttemptEvent",  # the answer
        "CallEvent",
        "CacheEvent",  # hit
        "CallEvent",
    ]
    miss, wait, failed, retry, _, answered, call, hit, cached = events
    assert isinstance(miss, CacheEvent) and not miss.hit and isinstance(hit, CacheEvent) and hit.hit
    assert isinstance(wait, WaitEvent) and not wait.timed_out and wait.seconds >= 0
    assert isinstance(failed, AttemptEvent) and (failed.error_kind, failed.code) == ("rate_limit", "1302")
    assert isinstance(retry, RetryEvent) and (retry.attempt, retry.delay, retry.exhausted) == (1, 0.0, False)
    assert isinstance(answered, AttemptEvent) and answered.error_kind is None
    assert (answered.prompt_tokens, answered.completion_tokens, answered.total_tokens) == (4, 6, 10)
    assert isinstance(call, CallEvent) and call.outcome == "success" and call.error is None
    assert call.seconds >= answered.seconds
    assert isinstance(cached, CallEvent) and cached.outcome == "success"
    assert {event.key for event in events} == {"glm-4"}
    assert all(PROMPT not in repr(event) for event in events)


def test_exhausted_retries_and_a_fallback(events: list[GuardEvent], local_backend: LocalBackend) -> None:
    ask = make_stack(local_backend, [5])
    assert ask("q") == "busy"
    exhausted = [e for e in events if isinstance(e, RetryEvent) and e.exhausted]
    assert len(exhausted) == 1 and exhausted[0].attempt == 2 and exhausted[0].delay is None
    (served,) = [e for e in events if isinstance(e, FallbackEvent)]
    assert (served.error, served.code) == ("GLMRateLimitException", "1302")
    assert isinstance(events[-1], CallEvent) and events[-1].outcome == "fallback"


async def test_async_errors_and_timeouts(events: list[GuardEvent], local_backend: LocalBackend) -> None:
    @rate_limited(1, 60.0, backend=local_backend, max_wait=0)
    async def call() -> str:
        raise ValueError(PROMPT)

    with pytest.raises(ValueError):
        await call()
    with pytest.raises(glm_guard.RateLimitTimeout):
        await call()
    attempt, failed = [e for e in events if isinstance(e, (AttemptEvent, CallEvent))][:2]
    assert isinstance(attempt, AttemptEvent) and attempt.error_kind == "other"
    assert isinstance(failed, CallEvent) and (failed.outcome, failed.error) == ("error", "ValueError")
    timed_out = [e for e in events if isinstance(e, WaitEvent) and e.timed_out]
    assert len(timed_out) == 1
    assert isinstance(events[-1], CallEvent) and events[-1].error == "RateLimitTimeout"


def test_events_flow_with_stats_off_and_stop_after_unsubscribe(local_backend: LocalBackend) -> None:
    @rate_limited(100, 1.0, backend=local_backend)
    def call() -> int:
        return 1

    glm_guard.configure_stats(enabled=False)
    assert not HUB.active
    seen: list[GuardEvent] = []
    unsubscribe = glm_guard.subscribe(seen.append)
    assert HUB.active and not RECORDER.recording
    call()
    assert [type(e) for e in seen] == [WaitEvent, AttemptEvent, CallEvent]
    assert len(RECORDER.buffer) == 0  # nothing recorded while stats are off
    unsubscribe()
    unsubscribe()  # twice is harmless
    call()
    assert len(seen) == 3 and not HUB.active


def test_a_failing_subscriber_never_breaks_the_call(
    local_backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: GuardEvent) -> None:
        raise RuntimeError("subscriber bug")

    @rate_limited(100, 1.0, backend=local_backend)
    def call() -> str:
        return "answer"

    unsubscribe = glm_guard.subscribe(broken)
    try:
        with caplog.at_level(logging.WARNING, logger="glm_guard"):
            assert call() == "answer"
            assert call() == "answer"
    finally:
        unsubscribe()
    assert len([r for r in caplog.records if "subscriber" in r.getMessage()]) == 1  # logged once


def test_events_are_immutable_records() -> None:
    event = CallEvent("k", 0.1, "success", None, 0.0)
    with pytest.raises(AttributeError):
        event.key = "other"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    assert event._replace(key="other").key == "other" and event.key == "k"
    with pytest.raises(TypeError):
        glm_guard.subscribe("not callable")  # type: ignore[arg-type]


def test_logging_subscriber_logs_structured_fields(
    events: list[GuardEvent], local_backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    ask = make_stack(local_backend, [1])
    unsubscribe = LoggingSubscriber(level=logging.INFO).subscribe()
    try:
        with caplog.at_level(logging.INFO, logger="glm_guard.events"):
            ask(PROMPT)
    finally:
        unsubscribe()
    records = [r for r in caplog.records if r.name == "glm_guard.events"]
    assert [r.glm_guard_event for r in records] == [
        "cache",
        "wait",
        "attempt",
        "retry",
        "wait",
        "attempt",
        "call",
    ]
    failed = records[2]
    assert (failed.glm_guard_key, failed.glm_guard_error_kind, failed.glm_guard_code) == ("glm-4", "rate_limit", "1302")
    assert "rate_limit 1302" in failed.getMessage()
    assert records[-1].glm_guard_outcome == "success"
    assert all(PROMPT not in r.getMessage() and PROMPT not in str(r.__dict__) for r in records)


def test_prometheus_subscriber_counts_events(local_backend: LocalBackend) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from glm_guard.monitoring import PrometheusSubscriber

    registry = prometheus_client.CollectorRegistry()
    subscriber = PrometheusSubscriber(registry)
    unsubscribe = subscriber.subscribe()
    try:
        ask = make_stack(local_backend, [1])
        ask(PROMPT)
        ask(PROMPT)
    finally:
        unsubscribe()
    text = prometheus_client.generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("glm_guard_calls_total", (("key", "glm-4"), ("outcome", "success")))] == 2
    assert samples[("glm_guard_attempts_total", (("key", "glm-4"),))] == 2
    errors = ("glm_guard_attempt_errors_total", (("code", "1302"), ("key", "glm-4"), ("kind", "rate_limit")))
    assert samples[errors] == 1
    assert samples[("glm_guard_cache_requests_total", (("key", "glm-4"), ("result", "hit")))] == 1
    assert samples[("glm_guard_tokens_total", (("key", "glm-4"), ("type", "total")))] == 10
    assert samples[("glm_guard_call_duration_seconds_count", (("key", "glm-4"),))] == 2
    assert PROMPT not in text


def cut_once(backend: LocalBackend) -> None:
    """A 1302 under ``concurrency="auto"`` (initial 4) with nothing else running: the limit falls to 1."""

    @rate_limited(concurrency=AutoConcurrency(initial=4), key="glm-auto", backend=backend)
    def ask() -> None:
        raise ErrorWithText(SEED_1302)

    with pytest.raises(ErrorWithText):
        ask()


def test_a_learned_limit_change_is_an_event_and_a_log_line(
    events: list[GuardEvent], local_backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    unsubscribe = LoggingSubscriber(level=logging.INFO).subscribe()
    try:
        with caplog.at_level(logging.INFO, logger="glm_guard.events"):
            cut_once(local_backend)
    finally:
        unsubscribe()
        local_backend.close()
    (change,) = [event for event in events if isinstance(event, LimitChanged)]
    assert change[:3] == ("glm-auto", 1, 1)
    (record,) = [r for r in caplog.records if r.name == "glm_guard.events" and r.glm_guard_event == "limitchanged"]
    assert (record.glm_guard_key, record.glm_guard_limit, record.glm_guard_epoch) == ("glm-auto", 1, 1)
    assert record.getMessage() == "glm_guard limitchanged glm-auto: learned concurrency limit now 1 (epoch 1)"


def test_prometheus_subscriber_sets_the_learned_limit_gauge(local_backend: LocalBackend) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")

    from glm_guard.monitoring import PrometheusSubscriber

    registry = prometheus_client.CollectorRegistry()
    unsubscribe = PrometheusSubscriber(registry).subscribe()
    try:
        cut_once(local_backend)
    finally:
        unsubscribe()
        local_backend.close()
    assert registry.get_sample_value("glm_guard_learned_concurrency_limit", {"key": "glm-auto"}) == 1
