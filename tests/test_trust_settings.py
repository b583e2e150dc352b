"""The settings of the trust boundaries: defaults, and a bad value names itself."""

from __future__ import annotations

import pytest

from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError


def test_defaults(tmp_path):
    settings = Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path)})
    assert settings.default_deploy_quota == 1000
    assert settings.max_active_deployments_per_org == 25
    assert settings.deploy_rate_limit_per_token == "60/minute"
    assert settings.cors_origins == ("https://zepid.dev", "https://*.zepid.dev")
    assert settings.deploy_status_public is False
    assert settings.metrics_token == ""
    assert settings.sandbox_isolation == "auto"
    # The embedded default keeps its rate-limit counters in memory.
    assert settings.rate_limit_storage_url == "memory://"


@pytest.mark.parametrize(
    ("broker", "storage"),
    [
        ("redis://cache:6379/2", "redis://cache:6379/2"),
        ("rediss://:pw@cache:6380/0", "rediss://:pw@cache:6380/0"),
        ("amqp://guest:guest@mq//", "memory://"),
    ],
)
def test_rate_limits_share_the_brokers_redis_when_there_is_one(broker, storage):
    assert Settings.from_env({"CELERY_BROKER_URL": broker}).rate_limit_storage_url == storage


def test_explicit_values_are_read():
    settings = Settings.from_env(
        {
            "DEFAULT_DEPLOY_QUOTA": "0",
            "MAX_ACTIVE_DEPLOYMENTS_PER_ORG": "3",
            "DEPLOY_RATE_LIMIT_PER_TOKEN": "10 per second; 500 per hour",
            "RATE_LIMIT_STORAGE_URL": "redis://limits:6379/4",
            "CORS_ORIGINS": "https://IDE.example.io/, https://*.example.io",
            "DEPLOY_STATUS_PUBLIC": "true",
            "PLATFORM_DOMAINS": "Sites.Example.net.",
            "SANDBOX_ISOLATION": "none",
        }
    )
    assert settings.default_deploy_quota == 0
    assert settings.max_active_deployments_per_org == 3
    assert settings.deploy_rate_limit_per_token == "10 per second; 500 per hour"
    assert settings.rate_limit_storage_url == "redis://limits:6379/4"
    assert settings.cors_origins == ("https://ide.example.io", "https://*.example.io")
    assert settings.deploy_status_public is True
    assert settings.platform_domains == ("sites.example.net",)
    assert settings.sandbox_isolation == "none"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"DEFAULT_DEPLOY_QUOTA": "-1"}, "DEFAULT_DEPLOY_QUOTA"),
        ({"MAX_ACTIVE_DEPLOYMENTS_PER_ORG": "0"}, "MAX_ACTIVE_DEPLOYMENTS_PER_ORG"),
        ({"DEPLOY_RATE_LIMIT_PER_TOKEN": "sixty"}, "DEPLOY_RATE_LIMIT_PER_TOKEN"),
        ({"DEPLOY_RATE_LIMIT_PER_ORG": "5/fortnight"}, "DEPLOY_RATE_LIMIT_PER_ORG"),
        ({"RATE_LIMIT_STORAGE_URL": "mysql://x"}, "RATE_LIMIT_STORAGE_URL"),
        ({"CORS_ORIGINS": "zepid.dev"}, "CORS_ORIGINS"),
        ({"CORS_ORIGINS": "https://zepid.dev/app"}, "CORS_ORIGINS"),
        ({"CORS_ORIGINS": "https://*"}, "CORS_ORIGINS"),
        ({"DEPLOY_STATUS_PUBLIC": "maybe"}, "DEPLOY_STATUS_PUBLIC"),
        ({"PLATFORM_DOMAINS": "not a domain"}, "PLATFORM_DOMAINS"),
        ({"SANDBOX_ISOLATION": "docker"}, "SANDBOX_ISOLATION"),
        ({"SANDBOX_MEMORY_BYTES": "1"}, "SANDBOX_MEMORY_BYTES"),
        ({"SANDBOX_MAX_PROCESSES": "many"}, "SANDBOX_MAX_PROCESSES"),
        ({"SESSION_TTL": "5"}, "SESSION_TTL"),
    ],
)
def test_a_malformed_setting_names_itself(env, name):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.setting == name
    assert "\n" not in str(raised.value)
