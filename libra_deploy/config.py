"""Settings: the one module of the core that reads the environment.

Every setting is read, coerced and checked here, once, when a process starts. A missing or malformed
value raises :class:`~libra_deploy.errors.ConfigError` whose message is one line naming the variable,
so ``libra-deploy up``, the web process and the worker all stop with the same clear sentence.

``celeryconfig.py`` reads the few variables Celery itself needs (broker URL, queue names, the
deployment timeout) because DESIGN.md keeps it free of our imports; its defaults match the ones here
and a test checks that they agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from libra_deploy.errors import ConfigError
from libra_deploy.redact import redact_url
from libra_deploy.registry import DEPLOY_TARGETS, OBJECT_STORES, SANDBOX_PROVIDERS

ENVIRONMENTS = ("development", "test", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MIB = 1024 * 1024


def _database_url(raw: str, data_dir: Path) -> str:
    """Return a SQLAlchemy URL for DATABASE_URL, with every Postgres spelling on psycopg 3."""
    if not raw:
        return f"sqlite:///{data_dir / 'libra.db'}"
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if raw.startswith(prefix) and len(raw) > len(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    if raw.startswith("sqlite:///") and len(raw) > len("sqlite:///"):
        return raw
    raise ConfigError(
        "DATABASE_URL", "must be postgres://, postgresql://, postgresql+psycopg:// or sqlite:///PATH", raw
    )


def embedded_broker_url(data_dir: Path) -> str:
    """The embedded broker: kombu's SQLAlchemy transport on a SQLite file beside the database."""
    return f"sqla+sqlite:///{data_dir / 'broker.db'}"


def _broker_url(raw: str, data_dir: Path) -> str:
    if not raw:
        return embedded_broker_url(data_dir)
    scheme = urlsplit(raw).scheme
    if scheme in ("redis", "rediss", "amqp", "amqps", "pyamqp") or scheme.startswith("sqla+"):
        return raw
    raise ConfigError("CELERY_BROKER_URL", "must be redis://, amqp:// or sqla+sqlite:///PATH", raw)


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with. Build it with :meth:`from_env`."""

    data_dir: Path
    database_url: str
    broker_url: str
    port: int = 3008
    public_url: str = "http://127.0.0.1:3008"
    environment: str = "development"
    log_level: str = "INFO"
    deployment_queue: str = "deployment-queue"
    deployment_dlq: str = "deployment-dlq"
    #: The whole deployment's budget in milliseconds (the seed's MAX_DEPLOYMENT_TIMEOUT).
    max_deployment_timeout_ms: int = 600_000
    max_concurrent_deployments: int = 5
    sandbox_provider: str = "local"
    deploy_target: str = "local"
    object_store: str = "local"
    # Input limits (POST /deploy); each refusal names the limit it hit.
    max_request_bytes: int = 160 * MIB
    max_files: int = 10_000
    max_file_bytes: int = 25 * MIB
    max_total_bytes: int = 100 * MIB
    max_path_length: int = 512
    max_path_depth: int = 32
    max_history_messages: int = 500
    max_history_message_bytes: int = 64 * 1024
    #: First retry delay of a failed step in seconds; doubled per retry, capped, with jitter.
    step_retry_base_delay_s: float = 2.0
    #: A running step whose heartbeat is older than this lost its worker; the reaper resumes it.
    heartbeat_timeout_s: float = 60.0
    #: A queued deployment not picked up within this time is published again (its message was lost).
    pickup_timeout_s: float = 60.0
    #: How often unpublished deployments and dead letters are published (the outbox relay).
    outbox_relay_interval_s: float = 5.0
    #: How often the reaper looks for lost deployments.
    reaper_interval_s: float = 15.0
    #: How long a deployment waiting for a sandbox slot waits before asking again.
    slot_wait_s: float = 1.0
    #: How many log lines /deploy-status returns (the newest ones).
    status_log_lines: int = 100
    #: Deployments kept per project by garbage collection, besides the live and the pinned ones.
    retention_keep: int = 20
    #: Seconds a blob must stay unreferenced, across two gc runs, before gc deletes it.
    gc_blob_grace_s: float = 3600.0
    #: How often retention and garbage collection run (celery beat, or libra-deploy up).
    gc_interval_s: float = 3600.0
    #: Deliver webhooks to private, loopback and link-local addresses too (tests, private networks).
    webhook_allow_private: bool = False
    #: Attempts per webhook delivery before it is recorded as failed.
    webhook_max_attempts: int = 6
    #: First retry delay of a webhook delivery in seconds; doubled per retry, capped at an hour.
    webhook_retry_base_delay_s: float = 10.0
    #: How long a webhook receiver may take to answer.
    webhook_timeout_s: float = 10.0
    #: When set, GET /metrics requires ``Authorization: Bearer <METRICS_TOKEN>``.
    metrics_token: str | None = field(default=None, repr=False)
    #: A comment is sent on an idle live-log stream this often, so proxies keep it open.
    sse_keepalive_s: float = 15.0
    #: How often a live-log stream looks for new lines in the database.
    sse_poll_s: float = 0.5
    extra: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting; raise ConfigError naming the first bad one."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        data_dir = Path(get("LIBRA_DATA_DIR", "./.libra") or "./.libra").expanduser().resolve()
        port = _int(env, "PORT", 3008, minimum=1, maximum=65535)
        public_url = get("PUBLIC_URL") or f"http://127.0.0.1:{port}"
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("PUBLIC_URL", "must be an absolute http(s) URL", public_url)
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "database_url": _database_url(get("DATABASE_URL") or get("POSTGRES_URL"), data_dir),
            "broker_url": _broker_url(get("CELERY_BROKER_URL"), data_dir),
            "port": port,
            "public_url": public_url.rstrip("/"),
            "environment": _choice(env, "ENVIRONMENT", "development", ENVIRONMENTS),
            "log_level": _choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            "deployment_queue": _name(env, "DEPLOYMENT_QUEUE_NAME", "deployment-queue"),
            "deployment_dlq": _name(env, "DEPLOYMENT_DLQ_NAME", "deployment-dlq"),
            "max_deployment_timeout_ms": _int(env, "MAX_DEPLOYMENT_TIMEOUT", 600_000, minimum=1000),
            "max_concurrent_deployments": _int(env, "MAX_CONCURRENT_DEPLOYMENTS", 5, minimum=1),
            "sandbox_provider": _choice(
                env, "SANDBOX_BUILDER_DEFAULT_PROVIDER", "local", tuple(SANDBOX_PROVIDERS)
            ),
            "deploy_target": _choice(env, "DEPLOY_TARGET", "local", tuple(DEPLOY_TARGETS)),
            "object_store": _choice(env, "OBJECT_STORE", "local", tuple(OBJECT_STORES)),
            "max_request_bytes": _int(env, "MAX_REQUEST_BYTES", 160 * MIB, minimum=1024),
            "max_files": _int(env, "MAX_FILES", 10_000, minimum=1),
            "max_file_bytes": _int(env, "MAX_FILE_BYTES", 25 * MIB, minimum=1),
            "max_total_bytes": _int(env, "MAX_TOTAL_BYTES", 100 * MIB, minimum=1),
            "max_path_length": _int(env, "MAX_PATH_LENGTH", 512, minimum=16),
            "max_path_depth": _int(env, "MAX_PATH_DEPTH", 32, minimum=1),
            "max_history_messages": _int(env, "MAX_HISTORY_MESSAGES", 500, minimum=0),
            "max_history_message_bytes": _int(env, "MAX_HISTORY_MESSAGE_BYTES", 64 * 1024, minimum=1),
            "step_retry_base_delay_s": _float(env, "STEP_RETRY_BASE_DELAY", 2.0, minimum=0.0),
            "heartbeat_timeout_s": _float(env, "HEARTBEAT_TIMEOUT", 60.0, minimum=1.0),
            "pickup_timeout_s": _float(env, "PICKUP_TIMEOUT", 60.0, minimum=1.0),
            "outbox_relay_interval_s": _float(env, "OUTBOX_RELAY_INTERVAL", 5.0, minimum=0.1),
            "reaper_interval_s": _float(env, "REAPER_INTERVAL", 15.0, minimum=0.1),
            "slot_wait_s": _float(env, "SLOT_WAIT_INTERVAL", 1.0, minimum=0.05),
            "status_log_lines": _int(env, "STATUS_LOG_LINES", 100, minimum=1),
            "retention_keep": _int(env, "RETENTION_KEEP", 20, minimum=1),
            "gc_blob_grace_s": _float(env, "GC_BLOB_GRACE", 3600.0, minimum=0.0),
            "gc_interval_s": _float(env, "GC_INTERVAL", 3600.0, minimum=1.0),
            "webhook_allow_private": _bool(env, "WEBHOOK_ALLOW_PRIVATE", False),
            "webhook_max_attempts": _int(env, "WEBHOOK_MAX_ATTEMPTS", 6, minimum=1),
            "webhook_retry_base_delay_s": _float(env, "WEBHOOK_RETRY_BASE_DELAY", 10.0, minimum=0.0),
            "webhook_timeout_s": _float(env, "WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
            "metrics_token": get("METRICS_TOKEN") or None,
            "sse_keepalive_s": _float(env, "SSE_KEEPALIVE_INTERVAL", 15.0, minimum=0.1),
            "sse_poll_s": _float(env, "SSE_POLL_INTERVAL", 0.5, minimum=0.05),
            "extra": dict(env),
        }
        if values["deployment_queue"] == values["deployment_dlq"]:
            raise ConfigError(
                "DEPLOYMENT_DLQ_NAME", "must differ from DEPLOYMENT_QUEUE_NAME", values["deployment_dlq"]
            )
        return cls(**values)

    # Derived values -------------------------------------------------------------------------------

    @property
    def is_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")

    @property
    def deployment_timeout_s(self) -> float:
        return self.max_deployment_timeout_ms / 1000

    @property
    def heartbeat_interval_s(self) -> float:
        """Heartbeats come several times per timeout, so one late write never looks like a lost worker."""
        return min(self.heartbeat_timeout_s / 4, 10.0)

    def describe(self) -> dict[str, Any]:
        """Settings as shown to an operator (URLs with their passwords removed)."""
        shown: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "metrics_token":
                value = "***" if value else None
            if f.name in ("database_url", "broker_url"):
                value = redact_url(value)
            shown[f.name] = str(value) if isinstance(value, Path) else value
        return shown


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(name, "must be an integer", raw) from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(name, f"must be {bounds}", raw)
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, "must be a number", raw) from None
    if not value >= minimum:
        raise ConfigError(name, f"must be at least {minimum}", raw)
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "must be 1 or 0 (true or false)", raw)


def _choice(
    env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], *, upper: bool = False
) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}", raw)
    return value


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not all(c.isalnum() or c in "-_." for c in raw):
        raise ConfigError(name, "may hold only letters, digits, '-', '_' and '.'", raw)
    return raw
