"""Every environment variable is validated, and errors name it; secrets never show."""

from __future__ import annotations

import pytest

import glm_guard
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
