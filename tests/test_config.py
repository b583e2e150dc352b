"""Settings: one module reads them, a bad one stops start-up with one line naming it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_default(tmp_path):
    settings = Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'libra.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert settings.public_url == "http://127.0.0.1:3008"
    assert settings.deployment_queue == "deployment-queue"
    assert settings.deployment_dlq == "deployment-dlq"
    assert settings.max_deployment_timeout_ms == 600_000
    assert settings.max_concurrent_deployments == 5
    assert (settings.sandbox_provider, settings.deploy_target, settings.object_store) == (
        "local",
        "local",
        "local",
    )


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://u:p@db:5432/libra",
        "postgresql://u:p@db:5432/libra",
        "postgresql+psycopg://u:p@db:5432/libra",
    ],
)
def test_every_postgres_spelling_means_psycopg_3(raw):
    assert Settings.from_env({"DATABASE_URL": raw}).database_url == "postgresql+psycopg://u:p@db:5432/libra"


def test_postgres_url_is_accepted_as_database_url():
    settings = Settings.from_env({"POSTGRES_URL": "postgres://db/libra"})
    assert settings.database_url == "postgresql+psycopg://db/libra"


def test_public_url_follows_the_port():
    assert Settings.from_env({"PORT": "4000"}).public_url == "http://127.0.0.1:4000"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"DATABASE_URL": "mysql://db/libra"}, "DATABASE_URL"),
        ({"CELERY_BROKER_URL": "kafka://x"}, "CELERY_BROKER_URL"),
        ({"MAX_DEPLOYMENT_TIMEOUT": "ten minutes"}, "MAX_DEPLOYMENT_TIMEOUT"),
        ({"MAX_DEPLOYMENT_TIMEOUT": "-5"}, "MAX_DEPLOYMENT_TIMEOUT"),
        ({"MAX_CONCURRENT_DEPLOYMENTS": "0"}, "MAX_CONCURRENT_DEPLOYMENTS"),
        ({"PORT": "70000"}, "PORT"),
        ({"PUBLIC_URL": "ftp://x"}, "PUBLIC_URL"),
        ({"SANDBOX_BUILDER_DEFAULT_PROVIDER": "docker"}, "SANDBOX_BUILDER_DEFAULT_PROVIDER"),
        ({"DEPLOY_TARGET": "ftp"}, "DEPLOY_TARGET"),
        ({"OBJECT_STORE": "gcs"}, "OBJECT_STORE"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"DEPLOYMENT_QUEUE_NAME": "bad name!"}, "DEPLOYMENT_QUEUE_NAME"),
        ({"DEPLOYMENT_DLQ_NAME": "deployment-queue"}, "DEPLOYMENT_DLQ_NAME"),
        ({"RETENTION_KEEP": "0"}, "RETENTION_KEEP"),
        ({"GC_BLOB_GRACE": "an hour"}, "GC_BLOB_GRACE"),
        ({"GC_BLOB_GRACE": "0"}, "GC_BLOB_GRACE"),
    ],
)
def test_a_malformed_setting_names_itself(env, name):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.setting == name
    assert str(raised.value).startswith(f"configuration error: {name} ")
    assert "\n" not in str(raised.value)


def test_the_blob_grace_must_outlast_the_longest_step():
    """A build's output is unreferenced from its upload until its record: gc waits at least that long."""
    assert Settings.from_env({}).step_time_limit_s == 780  # 600 s x 1.2 + 60
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"MAX_DEPLOYMENT_TIMEOUT": str(2 * 3600 * 1000)})  # the default grace is 1 h
    assert raised.value.setting == "GC_BLOB_GRACE"
    assert "at least 8700 s" in str(raised.value)
    longer = Settings.from_env({"MAX_DEPLOYMENT_TIMEOUT": str(2 * 3600 * 1000), "GC_BLOB_GRACE": "8700"})
    assert longer.gc_blob_grace_s == 8700


def test_a_password_in_a_bad_url_is_not_shown():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"DATABASE_URL": "mysql://admin:hunter2@db/libra"})
    assert "hunter2" not in str(raised.value)


def test_celeryconfig_defaults_agree_with_the_settings(monkeypatch, tmp_path):
    for name in (
        "CELERY_BROKER_URL",
        "DEPLOYMENT_QUEUE_NAME",
        "DEPLOYMENT_DLQ_NAME",
        "MAX_DEPLOYMENT_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIBRA_DATA_DIR", str(tmp_path))
    import celeryconfig

    fresh = importlib.reload(celeryconfig)
    try:
        settings = Settings.from_env()
        assert fresh.broker_url == settings.broker_url
        assert [q.name for q in fresh.task_queues] == [settings.deployment_queue, "deployment-webhooks"]
        assert fresh.dead_letter_queue.name == settings.deployment_dlq
        assert fresh.dead_letter_queue.exchange.name == "deployment-dlx"
        assert fresh.task_queues[0].exchange.name == "deployment"
        assert fresh.task_acks_late
        assert fresh.task_reject_on_worker_lost
        assert fresh.worker_prefetch_multiplier == 1
        assert fresh.worker_concurrency == 5
        assert fresh.task_time_limit == settings.step_time_limit_s
        assert fresh.accept_content == ["json"]
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)


@pytest.mark.parametrize(
    "command",
    [
        [str(ROOT / ".venv/bin/libra-deploy"), "up"],
        [str(ROOT / ".venv/bin/libra-deploy"), "orgs", "create", "acme"],
        [str(ROOT / ".venv/bin/celery"), "-A", "tasks", "worker"],
    ],
    ids=["up", "operator-command", "celery-worker"],
)
def test_a_bad_setting_stops_start_up_with_one_clear_line(tmp_path, command):
    env = {**os.environ, "LIBRA_DATA_DIR": str(tmp_path), "MAX_DEPLOYMENT_TIMEOUT": "soon"}
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "libra-deploy: configuration error: MAX_DEPLOYMENT_TIMEOUT must be an integer (got 'soon')"
    ]
    assert result.stdout == ""
    assert sys.executable  # the venv's interpreter ran the commands


def test_provider_settings_have_their_defaults(tmp_path):
    settings = Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path)})
    assert settings.s3_region == "auto"
    assert settings.logs_bucket == "libra-deployment-logs"
    assert settings.artifacts_bucket == "libra-deployment-artifacts"
    assert settings.s3_create_buckets is False
    assert settings.cloudflare_api_base_url == "https://api.cloudflare.com/client/v4"
    assert settings.s3_botocore_config()["request_checksum_calculation"] == "when_required"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL"),
        ({"S3_CREATE_BUCKETS": "maybe"}, "S3_CREATE_BUCKETS"),
        ({"LOGS_BUCKET": "Logs_Bucket"}, "LOGS_BUCKET"),
        ({"SITES_PUBLIC_URL": "sites.example.io"}, "SITES_PUBLIC_URL"),
        ({"CLOUDFLARE_API_BASE_URL": "api.cloudflare.com"}, "CLOUDFLARE_API_BASE_URL"),
        ({"CLOUDFLARE_PAGES_PROJECT_PREFIX": "Bad_Prefix"}, "CLOUDFLARE_PAGES_PROJECT_PREFIX"),
        ({"DAYTONA_SNAPSHOT": "s", "DAYTONA_IMAGE": "node:20"}, "DAYTONA_IMAGE"),
        ({"OBJECT_STORE": "s3", "S3_ACCESS_KEY_ID": "AKIA0123"}, "S3_SECRET_ACCESS_KEY"),
    ],
)
def test_a_malformed_provider_setting_names_itself(env, name):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.setting == name


def test_secrets_are_never_shown(tmp_path):
    env = {
        "LIBRA_DATA_DIR": str(tmp_path),
        "S3_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0001",
        "S3_SECRET_ACCESS_KEY": "s3-secret-value-0001",
        "CLOUDFLARE_API_TOKEN": "cf-token-value-0001",
        "E2B_API_KEY": "e2b-key-value-0001",
        "DAYTONA_API_KEY": "daytona-key-value-0001",
    }
    settings = Settings.from_env(env)
    shown = repr(settings) + str(settings.describe())
    for name in (
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "CLOUDFLARE_API_TOKEN",
        "E2B_API_KEY",
        "DAYTONA_API_KEY",
    ):
        assert env[name] not in shown
    # Registered secrets are scrubbed from any error, wherever an SDK put them.
    error = ConfigError("X", f"failed with header Authorization: Bearer {env['CLOUDFLARE_API_TOKEN']}")
    assert env["CLOUDFLARE_API_TOKEN"] not in str(error)
    from libra_deploy.errors import ProviderError

    assert "daytona-key-value-0001" not in str(ProviderError("key daytona-key-value-0001 refused"))
