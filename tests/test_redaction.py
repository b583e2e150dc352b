"""Secrets never show: not in logs, deployment logs, statuses, errors or dead-letter payloads."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from libra_deploy.config import Settings
from libra_deploy.errors import StepError
from libra_deploy.logging_config import configure_logging
from libra_deploy.redact import (
    RedactingFilter,
    install_log_redaction,
    looks_secret,
    redact_data,
    redact_text,
    redact_url,
    register_secrets,
)
from tests.helpers import deploy, wait_for, wait_for_step

#: (text, the secret inside it that must disappear, what must remain)
TEXTS = [
    ("redis://:s3cretpass@cache:6379/0", "s3cretpass", "redis://:***@cache:6379/0"),
    ("amqp://guest:hunter2x@mq/vhost", "hunter2x", "amqp://guest:***@mq/vhost"),
    (
        "git clone https://x-access-token:ghs_abcdef123456@github.com/a/b",
        "ghs_abcdef123456",
        "github.com/a/b",
    ),
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi", "Authorization: Bearer ***"),
    ("authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "authorization=Basic ***"),
    ("{'Authorization': 'token 0123456789abcdef'}", "0123456789abcdef", "'Authorization': 'token ***'"),
    ("curl -H 'Proxy-Authorization: Basic Zm9vOmJhcg=='", "Zm9vOmJhcg==", "Proxy-Authorization: Basic ***"),
    ("sent bearer eyJhbGciOi.payload", "eyJhbGciOi.payload", "bearer ***"),
    ("password=hunter2 user=bob", "hunter2", "password=*** user=bob"),
    ('{"api_key": "AbCdEf123456", "name": "x"}', "AbCdEf123456", '"api_key": "***", "name": "x"'),
    ("DB_PASSWORD='correct horse'", "correct", "DB_PASSWORD='***"),
    ("E2B_API_KEY=e2b_0123456789abcdef", "e2b_0123456789abcdef", "E2B_API_KEY=***"),
    ("client_secret: zzzz9999", "zzzz9999", "client_secret: ***"),
    ("Set-Cookie: session=lds_abc", "lds_abc", "Set-Cookie: ***"),
    ("token ldt_" + "A" * 43 + " leaked", "ldt_" + "A" * 43, "token *** leaked"),
    ("signed with whsec_" + "e-4_" * 11, "whsec_" + "e-4_" * 11, "signed with ***"),
    ("ghp_" + "b" * 36, "ghp_" + "b" * 36, "***"),
    ("npm_" + "c" * 36, "npm_" + "c" * 36, "***"),
    ("AKIAABCDEFGHIJKLMNOP is the key id", "AKIAABCDEFGHIJKLMNOP", "*** is the key id"),
    ("xoxb-1234567890-abcdef", "xoxb-1234567890-abcdef", "***"),
    ("sk_live_" + "d" * 24, "sk_live_" + "d" * 24, "***"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlaGVyZQ", "c2lnbmF0dXJlaGVyZQ", "jwt ***"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow", "***"),
]


@pytest.mark.parametrize(("text", "secret", "shown"), TEXTS)
def test_credentials_are_redacted_wherever_they_appear(text, secret, shown):
    redacted = redact_text(text)
    assert secret not in redacted
    assert shown in redacted


@pytest.mark.parametrize(
    "text",
    [
        "Deployment completed in 1.2 s",
        "Source: 3 files, 120 bytes (3 uploaded, 0 deleted)",
        "`npm run build` exited with code 1",
        "Live at http://127.0.0.1:3008/sites/prj_01abc/",
        "created token tok_01abc for usr_01abc",
    ],
)
def test_ordinary_lines_are_left_alone(text):
    assert redact_text(text) == text


def test_registered_secret_values_are_redacted_everywhere():
    value = f"Sup3r-{uuid.uuid4().hex}"
    register_secrets([value, "short"])
    assert redact_text(f"connecting with {value}!") == "connecting with ***!"
    # Values too short to be told from ordinary words are not searched for.
    assert redact_text("a short line") == "a short line"


def test_url_passwords_are_hidden_and_urls_without_are_untouched():
    assert redact_url("postgresql+psycopg://app:pw123456@db/libra") == "postgresql+psycopg://app:***@db/libra"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_redact_data_walks_json_and_masks_secret_keys():
    message = {
        "task": "deploy.build",
        "headers": {"Authorization": "Bearer abc", "X-Trace": "1"},
        "env": {"E2B_API_KEY": "whatever", "NODE_ENV": "production"},
        "error": "push to https://bot:pat123456@git.example.io failed",
        "attempts": [1, {"password": "x"}],
    }
    redacted = redact_data(message)
    assert redacted["headers"] == {"Authorization": "***", "X-Trace": "1"}
    assert redacted["env"] == {"E2B_API_KEY": "***", "NODE_ENV": "production"}
    assert "pat123456" not in redacted["error"]
    assert redacted["attempts"] == [1, {"password": "***"}]
    assert redacted["task"] == "deploy.build"


def test_the_services_secret_settings_are_collected(tmp_path):
    settings = Settings.from_env(
        {
            "LIBRA_DATA_DIR": str(tmp_path),
            "DATABASE_URL": "postgresql://app:db-password-1@db/libra",
            "CELERY_BROKER_URL": "redis://:broker-pass-2@cache:6379/0",
            "E2B_API_KEY": "e2b-key-value-3",
            "CLOUDFLARE_API_TOKEN": "cf-token-value-4",
            "AWS_SECRET_ACCESS_KEY": "aws-secret-5",
            "METRICS_TOKEN": "metrics-token-6",
            "PATH": "/usr/bin:/bin",
            "LOG_LEVEL": "INFO",
        }
    )
    assert settings.secret_values() >= {
        "db-password-1",
        "broker-pass-2",
        "e2b-key-value-3",
        "cf-token-value-4",
        "aws-secret-5",
        "metrics-token-6",
    }
    assert "/usr/bin:/bin" not in settings.secret_values()
    assert "metrics-token-6" not in json.dumps(settings.describe())
    assert "broker-pass-2" not in json.dumps(settings.describe())
    assert looks_secret("DAYTONA_API_KEY")
    assert looks_secret("SESSION_SECRET")
    assert not looks_secret("PWD")
    assert not looks_secret("MAX_FILES")


def test_log_records_are_redacted_messages_arguments_and_tracebacks():
    secret = f"Tr4ceback-{uuid.uuid4().hex}"
    install_log_redaction([secret])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.redaction.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("token is %s and url %s", secret, "https://u:p4ssw0rd@host/x")
        try:
            raise RuntimeError(f"failed with Authorization: Bearer {secret}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert secret not in output
    assert "p4ssw0rd" not in output
    assert "token is *** and url https://u:***@host/x" in output
    assert "RuntimeError: failed with Authorization: Bearer ***" in output


def test_the_services_json_log_lines_carry_redacted_tracebacks(tmp_path):
    secret = f"Js0nTrace-{uuid.uuid4().hex}"
    install_log_redaction([secret])
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging(Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path)}), stream)
    try:
        try:
            raise RuntimeError(f"upstream refused https://user:{secret}@s3.example/x")
        except RuntimeError:
            logging.getLogger("web.errors").exception("unhandled error: key=%s", secret)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert secret not in json.dumps(line)
    assert line["message"] == "unhandled error: key=***"
    assert "RuntimeError: upstream refused https://user:***@s3.example/x" in line["exc_info"]


def test_the_filter_can_sit_on_a_handler_too():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw %s", ("password=abc123",), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "pw password=***"


def test_errors_never_carry_credentials():
    error = StepError("could not reach redis://:cachepass9@cache:6379: refused")
    assert "cachepass9" not in str(error)
    assert "cachepass9" not in error.message


@pytest.mark.slow
def test_a_build_printing_secrets_leaves_none_in_logs_or_status(client, tenant, worker, runtime):
    registered = f"Registered-{uuid.uuid4().hex}"
    register_secrets([registered])
    token = "ldt_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
    script = "\n".join(
        [
            f"console.log('Authorization: Bearer {token}');",
            "console.log('password=hunter2hunter2');",
            "console.log('cloning https://ci:pa55w0rd-xyz@git.example.io/site.git');",
            f"console.log('the key is {registered}');",
            f"console.error('fatal: auth failed for {registered}');",
            "process.exit(1);",
        ]
    )
    files = {"package.json": json.dumps({"scripts": {"build": "node leak.js"}}), "leak.js": script}
    deployment_id = deploy(client, tenant, files)
    wait_for(client, tenant, deployment_id)
    status = wait_for_step(client, tenant, deployment_id, "cleanup", "completed")
    assert status["status"] == "failed"
    assert status["errorCode"] == "BUILD_FAILED"
    shown = json.dumps(status) + runtime.store.get(f"logs/{deployment_id}.log").decode()
    for secret in (token, "hunter2hunter2", "pa55w0rd-xyz", registered):
        assert secret not in shown
    assert "Authorization: Bearer ***" in status["logs"]
    assert "fatal: auth failed for ***" in status["error"]
