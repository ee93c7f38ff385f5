"""Every environment variable is validated, and errors name it; secrets never show."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import glm_guard
import glm_guard.http
from glm_guard import ConfigurationError, Settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GLM_API_MAX_CALLS_PER_MINUTE", "abc"),
        ("GLM_API_MAX_CALLS_PER_MINUTE", "0"),
        ("GLM_API_MAX_CALLS_PER_MINUTE", "-5"),
        ("GLM_API_MAX_CONCURRENCY", "2.5"),
        ("GLM_GUARD_DEFAULT_COOLDOWN", "-1"),
        ("GLM_GUARD_DEFAULT_COOLDOWN", "soon"),
        ("GLM_GUARD_DEFAULT_COOLDOWN", "inf"),
        ("REDIS_URL", "not-a-url"),
        ("REDIS_URL", "http://localhost:6379"),
        ("REDIS_URL", "redis://"),
        ("GLM_API_BASE_URL", "ftp://example"),
        ("GLM_GUARD_MAX_TRIES", "0"),
        ("GLM_API_TIMEOUT", "0"),
        ("GLM_GUARD_ON_BACKEND_ERROR", "ignore"),
        ("GLM_GUARD_REDIS_TIMEOUT", "-0.5"),
    ],
)
def test_invalid_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({name: value})
    assert caught.value.name == name
    assert name in str(caught.value)


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.max_calls_per_minute == 50
    assert settings.max_concurrency is None
    assert settings.backend == "local"
    assert settings.key_prefix == "glm_guard:"
    assert settings.on_backend_error == "local"
    assert settings.api_base_url == "https://open.bigmodel.cn/api/paas/v4"


def test_zhipuai_key_is_the_fallback() -> None:
    assert Settings.from_env({"ZHIPUAI_API_KEY": "zk"}).api_key == "zk"
    assert Settings.from_env({"ZHIPUAI_API_KEY": "zk", "GLM_API_KEY": "gk"}).api_key == "gk"


def test_secrets_never_appear_in_the_repr_or_errors() -> None:
    settings = Settings.from_env(
        {
            "GLM_API_KEY": "sk-very-secret",
            "REDIS_URL": "redis://:redis-pw-42@localhost:6379/0",
            "GLM_GUARD_CACHE_SECRET": "hmac-secret",
        }
    )
    text = repr(settings)
    for secret in ("sk-very-secret", "redis-pw-42", "hmac-secret"):
        assert secret not in text
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"REDIS_URL": "http://:redis-pw-42@localhost"})
    assert "redis-pw-42" not in str(caught.value)


def test_reload_settings_reads_the_environment_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM_API_MAX_CALLS_PER_MINUTE", "7")
    assert glm_guard.reload_settings().max_calls_per_minute == 7
    assert glm_guard.get_settings().max_calls_per_minute == 7


def test_applications_sharing_one_redis_do_not_collide_redis(redis_url: str) -> None:
    from glm_guard.backends import RedisBackend

    first = RedisBackend(redis_url, key_prefix="app-one:")
    second = RedisBackend(redis_url, key_prefix="app-two:")

    @glm_guard.rate_limited(1, 60.0, key="glm-4", backend=first, max_wait=0)
    def one() -> None: ...

    @glm_guard.rate_limited(1, 60.0, key="glm-4", backend=second, max_wait=0)
    def two() -> None: ...

    one()
    two()  # the same key name, another application: its own budget
    with pytest.raises(glm_guard.RateLimitTimeout):
        one()
    first.close()
    second.close()


def test_a_password_in_the_query_string_is_masked_too() -> None:
    from glm_guard._config import mask_url

    assert "s3cret" not in mask_url("redis://localhost:6379/0?password=s3cret")
    assert "s3cret" not in repr(Settings.from_env({"REDIS_URL": "redis://localhost:6379/0?password=s3cret"}))


# -- issue 12: URLs, Redis arguments and durations fail where they are configured -------------------

BAD_REDIS_URLS = [
    "redis://127.0.0.1:99999/0",  # port out of range
    "redis://127.0.0.1:0/0",
    "redis://127.0.0.1:port/0",
    "redis://127.0.0.1:6379/abc",  # redis-py would quietly use database 0
    "redis://127.0.0.1:6379/0?db=abc",
    "redis://127.0.0.1:6379/0?protocol=5",
    "redis://127.0.0.1:6379/0?socket_timeout=1e308",  # would override the timeout glm_guard sets
    "redis://127.0.0.1:6379/0?retry_on_timeout=true",
    "redis://127.0.0.1:6379/0?bogus=1",  # redis-py raises TypeError on every call
    "redis://127.0.0.1:6379/0?ssl_certfile=/x.pem",  # TLS options on a plain connection
    "unix://",
    "unix:///",
    "unix://localhost/tmp/redis.sock",
    "redis://:pa/ss@127.0.0.1:6379/0",  # a raw "/" in the password: no host to redis-py
    "redis://:pa[ss@127.0.0.1:6379/0",
    "redis://127.0.0.1:63\t79/0",  # urllib drops the tab
]


@pytest.mark.parametrize("url", BAD_REDIS_URLS)
def test_bad_redis_urls_fail_at_configuration_naming_where_they_came_from(url: str) -> None:
    from glm_guard.backends import RedisBackend

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"REDIS_URL": url})
    assert caught.value.name == "REDIS_URL"
    with pytest.raises(ConfigurationError) as caught:
        glm_guard.rate_limited(5, backend=url)
    assert caught.value.name == "backend"
    with pytest.raises(ConfigurationError) as caught:
        RedisBackend(url)
    assert caught.value.name == "url"


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379",
        "redis://localhost:6379/",
        "redis://localhost:6379/15",
        "redis://:p%2Fa%23s%3Fs%40@localhost:6379/0",  # reserved characters percent-encoded
        "redis://:p@ss@localhost:6379/0",  # an "@" in the password: the last one ends it
        "redis://alice:secret@localhost:6379/0",
        "redis://localhost:6379/0?password=secret&client_name=worker-1&db=2",
        "redis://[::1]:6379/0",
        "rediss://redis.example.com:6380/0?ssl_cert_reqs=none",
        "unix:///tmp/redis.sock",
        "unix://:secret@/tmp/redis.sock?db=3",
        "REDIS://LOCALHOST:6379/0",
    ],
)
def test_redis_urls_redis_py_reads_as_written_are_accepted(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


def test_a_shown_url_keeps_what_helps_and_nothing_secret() -> None:
    from glm_guard._config import mask_url

    assert mask_url("redis://alice:s3cret@redis:6379/0?db=1") == "redis://alice:***@redis:6379/0?db=1"
    assert mask_url("redis://:s3cret@redis:99999/0") == "redis://:***@redis:99999/0"
    assert mask_url("redis://:pa/ss@redis:6379/0") == "redis://<redacted>"
    assert mask_url("redis://redis/0?password=a&b&db=1") == "redis://redis/0?password=***&***=***&***=***"
    assert mask_url("s3cret@redis") == "<redacted>"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GLM_GUARD_REDIS_TIMEOUT", "1e308"),  # an OverflowError on every sync call
        ("GLM_GUARD_REDIS_TIMEOUT", "nan"),
        ("GLM_GUARD_REDIS_TIMEOUT", "61"),
        ("GLM_GUARD_REDIS_TIMEOUT", "0"),
        ("GLM_GUARD_KEY_PREFIX", "app*"),
        ("GLM_GUARD_KEY_PREFIX", "app[1]:"),
        ("GLM_GUARD_KEY_PREFIX", "my app:"),
        ("GLM_GUARD_KEY_PREFIX", "app\\:"),
        ("GLM_API_TIMEOUT", "1e308"),
        ("GLM_GUARD_DEFAULT_COOLDOWN", "1e300"),
    ],
)
def test_redis_settings_from_the_environment_are_bounded(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({name: value})
    assert caught.value.name == name


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("lease", 0),  # the renew thread spun, and leases expired at once: 8 ran against a limit of 2
        ("lease", -1.0),
        ("lease", float("nan")),
        ("lease", float("inf")),
        ("lease", 0.01),
        ("lease", 1e9),
        ("socket_timeout", -1),  # a raw ValueError on every call
        ("socket_timeout", float("nan")),
        ("socket_timeout", 0),
        ("socket_timeout", 1e308),
        ("fill_lease", 0),  # SET ... PX 0
        ("fill_lease", 1e300),
        ("key_prefix", ""),
        ("key_prefix", "app*:"),
        ("key_prefix", "app?:"),
        ("key_prefix", "[app]:"),
        ("key_prefix", "my app:"),
        ("key_prefix", "app\n"),
        ("key_prefix", 5),
    ],
)
def test_redis_backend_arguments_fail_at_construction_naming_the_argument(argument: str, value: object) -> None:
    from glm_guard.backends import RedisBackend, live_backends

    before = len(live_backends())
    with pytest.raises(ConfigurationError) as caught:
        RedisBackend("redis://127.0.0.1:6379/0", **{argument: value})  # type: ignore[arg-type]
    assert caught.value.name == argument
    assert len(live_backends()) == before


def test_a_redis_argument_taken_from_the_settings_names_its_variable() -> None:
    import dataclasses

    from glm_guard.backends import RedisBackend

    glm_guard.reload_settings(dataclasses.replace(Settings(), redis_timeout=-1.0))
    with pytest.raises(ConfigurationError) as caught:
        RedisBackend("redis://127.0.0.1:6379/0")
    assert caught.value.name == "GLM_GUARD_REDIS_TIMEOUT"
    glm_guard.reload_settings(dataclasses.replace(Settings(), key_prefix="a*"))
    with pytest.raises(ConfigurationError) as caught:
        RedisBackend("redis://127.0.0.1:6379/0")
    assert caught.value.name == "GLM_GUARD_KEY_PREFIX"


def test_durations_past_ten_years_fail_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match=r"^ttl:"):
        glm_guard.cached_response(ttl=1e300)  # Lua formats it 1e+300, which Redis refuses
    with pytest.raises(ConfigurationError, match=r"^period:"):
        glm_guard.rate_limited(5, period=1e300)
    with pytest.raises(ConfigurationError, match=r"^max_time:"):
        glm_guard.retry_on_1302(max_time=1e300)
    assert glm_guard.cached_response(ttl=9 * 365 * 86400.0) is not None


@pytest.mark.parametrize(
    ("name", "decorate"),
    [
        ("rate_limited", lambda: glm_guard.rate_limited(5, colldown=1.0)),
        ("retry_on_1302", lambda: glm_guard.retry_on_1302(max_tim=1.0)),
        ("GuardedTransport", lambda: glm_guard.http.client(calls=5, retry_on_result=True)),
    ],
)
def test_a_misspelt_keyword_fails_at_decoration_naming_it(name: str, decorate: Callable[[], object]) -> None:
    """The decorators forward their keywords as a group, so a typo must not slip through."""
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword argument '\w+'$"):
        decorate()


@pytest.mark.parametrize(
    ("argument", "codes"),
    [("retry_codes", [1302, None]), ("permanent_codes", ["1113", True]), ("retry_codes", [b"1302"])],
)
def test_codes_must_be_strings_or_integers(argument: str, codes: list[object]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        glm_guard.retry_on_1302(**{argument: codes})  # type: ignore[arg-type]
    assert caught.value.name == argument


@pytest.mark.parametrize("retry_after", [float("nan"), float("inf"), -1.0, "5"])
def test_a_retry_after_that_is_no_wait_is_ignored(retry_after: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from glm_guard import _retry

    slept: list[float] = []
    monkeypatch.setattr(_retry, "_sleep", slept.append)
    assert glm_guard.Classifier().classify(glm_guard.GLMRateLimitException(retry_after=retry_after)).retry_after is None  # type: ignore[arg-type]

    @glm_guard.retry_on_1302(3, base_delay=0.5, jitter=False)
    def call() -> None:
        raise glm_guard.GLMRateLimitException(code="1302", retry_after=retry_after)  # type: ignore[arg-type]

    with pytest.raises(glm_guard.GLMRateLimitException):
        call()
    assert slept == [0.5, 1.0]  # the backoff, not a retry at once
