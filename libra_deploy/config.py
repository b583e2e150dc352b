"""Settings: the one module of the core that reads the environment.

Every setting is read, coerced and checked here, once, when a process starts. A missing or malformed
value raises :class:`~libra_deploy.errors.ConfigError` whose message is one line naming the variable,
so ``libra-deploy up``, the web process and the worker all stop with the same clear sentence.

``celeryconfig.py`` reads the few variables Celery itself needs (broker URL, queue names, the
deployment timeout) because DESIGN.md keeps it free of our imports; its defaults match the ones here
and a test checks that they agree.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import limits
import limits.storage

from libra_deploy.errors import ConfigError
from libra_deploy.redact import looks_secret, redact_url, register_secrets, url_password
from libra_deploy.registry import DEPLOY_TARGETS, OBJECT_STORES, SANDBOX_PROVIDERS

ENVIRONMENTS = ("development", "test", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MIB = 1024 * 1024
GIB = 1024 * MIB
#: How builds are isolated: bubblewrap when it works here (auto), always (bubblewrap: start-up
#: fails without it), or never (none: resource limits and a scrubbed environment only).
SANDBOX_ISOLATIONS = ("auto", "bubblewrap", "none")
DEFAULT_CORS_ORIGINS = ("https://zepid.dev", "https://*.zepid.dev")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: A browser origin: scheme, host (a ``*.`` prefix allows one label), optional port, nothing else.
_ORIGIN = re.compile(r"^https?://(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*(:\d{1,5})?$")

#: Environment variable -> Settings field, for the settings that adapters require.
ENV_FIELDS = {
    "S3_ACCESS_KEY_ID": "s3_access_key_id",
    "S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
    "SITES_BUCKET": "sites_bucket",
    "CLOUDFLARE_ACCOUNT_ID": "cloudflare_account_id",
    "CLOUDFLARE_API_TOKEN": "cloudflare_api_token",
    "E2B_API_KEY": "e2b_api_key",
    "DAYTONA_API_KEY": "daytona_api_key",
}
#: What each adapter cannot work without: (choosing setting, adapter name) -> required settings.
REQUIRED_SETTINGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("SANDBOX_BUILDER_DEFAULT_PROVIDER", "e2b"): ("E2B_API_KEY",),
    ("SANDBOX_BUILDER_DEFAULT_PROVIDER", "daytona"): ("DAYTONA_API_KEY",),
    ("DEPLOY_TARGET", "s3"): ("SITES_BUCKET",),
    ("DEPLOY_TARGET", "cloudflare-pages"): ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN"),
}
#: Settings whose values are secrets: never shown, and scrubbed from every error and log line.
SECRET_SETTINGS = (
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "CLOUDFLARE_API_TOKEN",
    "E2B_API_KEY",
    "DAYTONA_API_KEY",
)
SECRET_FIELDS = frozenset(ENV_FIELDS[name] for name in SECRET_SETTINGS)


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
    #: How long the first deployment in the line for a sandbox slot waits before asking again (those
    #: further back wait longer, see slots.wait_s); a freed slot is handed over without waiting.
    slot_wait_s: float = 1.0
    #: How many log lines /deploy-status returns (the newest ones).
    status_log_lines: int = 100
    #: Deployments kept per project by garbage collection, besides the live and the pinned ones.
    retention_keep: int = 20
    #: Seconds a blob must stay unreferenced, across two gc runs, before gc deletes it.
    gc_blob_grace_s: float = 3600.0
    #: How often retention and garbage collection run (celery beat, or libra-deploy up).
    gc_interval_s: float = 3600.0
    # S3 API (OBJECT_STORE=s3, DEPLOY_TARGET=s3): R2, AWS S3, MinIO... through boto3.
    s3_endpoint_url: str = ""
    s3_region: str = "auto"
    s3_access_key_id: str = field(default="", repr=False)
    s3_secret_access_key: str = field(default="", repr=False)
    s3_addressing_style: str = "path"
    s3_create_buckets: bool = False
    sites_bucket: str = ""
    sites_public_url: str = ""
    logs_bucket: str = "libra-deployment-logs"
    artifacts_bucket: str = "libra-deployment-artifacts"
    # Cloudflare (DEPLOY_TARGET=cloudflare-pages).
    cloudflare_account_id: str = ""
    cloudflare_api_token: str = field(default="", repr=False)
    cloudflare_api_base_url: str = "https://api.cloudflare.com/client/v4"
    cloudflare_zone_id: str = ""
    cloudflare_pages_project_prefix: str = "libra-"
    # Sandbox providers (SANDBOX_BUILDER_DEFAULT_PROVIDER, or a project's own choice).
    e2b_api_key: str = field(default="", repr=False)
    e2b_domain: str = ""
    e2b_template: str = "base"
    daytona_api_key: str = field(default="", repr=False)
    daytona_api_url: str = ""
    daytona_target: str = ""
    daytona_snapshot: str = ""
    daytona_image: str = ""
    # Trust boundaries (issue 4): quotas, caps, rate limits, CORS, public endpoints, the sandbox.
    #: Deployments an organisation may start per calendar month (UTC) unless it has its own limit.
    default_deploy_quota: int = 1000
    #: Deployments an organisation may have queued or running at once.
    max_active_deployments_per_org: int = 25
    #: flask-limiter rate strings ("60/minute", "10 per second; 500 per hour") for POST /deploy.
    deploy_rate_limit_per_token: str = "60/minute"  # noqa: S105 - a rate, not a password
    deploy_rate_limit_per_org: str = "300/minute"
    #: Where rate-limit counters live: Redis in production, memory in the embedded default.
    rate_limit_storage_url: str = "memory://"
    #: Browser origins allowed by CORS besides any localhost port; "https://*.x" is one label under x.
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    #: Anyone holding a deployment id may read its status (logs redacted), as in the seed.
    deploy_status_public: bool = False
    #: When set, /metrics needs "Authorization: Bearer <METRICS_TOKEN>"; public otherwise.
    metrics_token: str = field(default="", repr=False)
    #: Domains of the platform besides the built-in ones: no project may attach a name under them.
    platform_domains: tuple[str, ...] = ()
    #: Default lifetime of a session made by ``libra-deploy sessions create``.
    session_ttl_s: int = 14 * 24 * 3600
    sandbox_isolation: str = "auto"
    #: Limits of every process a build runs (CPU seconds, memory, file size, processes).
    sandbox_cpu_seconds: int = 600
    sandbox_memory_bytes: int = 4 * GIB
    sandbox_file_bytes: int = 1 * GIB
    sandbox_max_processes: int = 512
    #: The unprivileged user builds run as when the service itself runs as root.
    sandbox_uid: int = 65534
    #: Deliver webhooks to private, loopback and link-local addresses too (tests, private networks).
    webhook_allow_private: bool = False
    #: Attempts per webhook delivery before it is recorded as failed.
    webhook_max_attempts: int = 6
    #: First retry delay of a webhook delivery in seconds; doubled per retry, capped at an hour.
    webhook_retry_base_delay_s: float = 10.0
    #: How long a webhook receiver may take to answer.
    webhook_timeout_s: float = 10.0
    #: A comment is sent on an idle live-log stream this often, so proxies keep it open.
    sse_keepalive_s: float = 15.0
    #: How often a live-log stream looks for new lines in the database.
    sse_poll_s: float = 0.5
    #: Fernet keys of the build variables and webhook secrets (ENCRYPTION_KEY, comma-separated): the
    #: first encrypts, any of them decrypts, so a key is rotated by putting the new one first.
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)
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
            "s3_endpoint_url": _url(env, "S3_ENDPOINT_URL"),
            "s3_region": get("S3_REGION") or "auto",
            "s3_access_key_id": get("S3_ACCESS_KEY_ID"),
            "s3_secret_access_key": get("S3_SECRET_ACCESS_KEY"),
            "s3_addressing_style": _choice(env, "S3_ADDRESSING_STYLE", "path", ("path", "virtual", "auto")),
            "s3_create_buckets": _bool(env, "S3_CREATE_BUCKETS"),
            "sites_bucket": _bucket(env, "SITES_BUCKET", ""),
            "sites_public_url": _url(env, "SITES_PUBLIC_URL"),
            "logs_bucket": _bucket(env, "LOGS_BUCKET", "libra-deployment-logs"),
            "artifacts_bucket": _bucket(env, "ARTIFACTS_BUCKET", "libra-deployment-artifacts"),
            "cloudflare_account_id": get("CLOUDFLARE_ACCOUNT_ID"),
            "cloudflare_api_token": get("CLOUDFLARE_API_TOKEN"),
            "cloudflare_api_base_url": _url(env, "CLOUDFLARE_API_BASE_URL")
            or "https://api.cloudflare.com/client/v4",
            "cloudflare_zone_id": get("CLOUDFLARE_ZONE_ID"),
            "cloudflare_pages_project_prefix": _pages_prefix(env),
            "e2b_api_key": get("E2B_API_KEY"),
            "e2b_domain": get("E2B_DOMAIN"),
            "e2b_template": get("E2B_TEMPLATE") or "base",
            "daytona_api_key": get("DAYTONA_API_KEY"),
            "daytona_api_url": _url(env, "DAYTONA_API_URL"),
            "daytona_target": get("DAYTONA_TARGET"),
            "daytona_snapshot": get("DAYTONA_SNAPSHOT"),
            "daytona_image": get("DAYTONA_IMAGE"),
            "default_deploy_quota": _int(env, "DEFAULT_DEPLOY_QUOTA", 1000, minimum=0),
            "max_active_deployments_per_org": _int(env, "MAX_ACTIVE_DEPLOYMENTS_PER_ORG", 25, minimum=1),
            "deploy_rate_limit_per_token": _rate(env, "DEPLOY_RATE_LIMIT_PER_TOKEN", "60/minute"),
            "deploy_rate_limit_per_org": _rate(env, "DEPLOY_RATE_LIMIT_PER_ORG", "300/minute"),
            "cors_origins": _origins(env, "CORS_ORIGINS", DEFAULT_CORS_ORIGINS),
            "deploy_status_public": _bool(env, "DEPLOY_STATUS_PUBLIC", False),
            "metrics_token": get("METRICS_TOKEN"),
            "platform_domains": _domains(env, "PLATFORM_DOMAINS"),
            "session_ttl_s": _int(env, "SESSION_TTL", 14 * 24 * 3600, minimum=60),
            "sandbox_isolation": _choice(env, "SANDBOX_ISOLATION", "auto", SANDBOX_ISOLATIONS),
            "sandbox_cpu_seconds": _int(env, "SANDBOX_CPU_SECONDS", 600, minimum=1),
            "sandbox_memory_bytes": _int(env, "SANDBOX_MEMORY_BYTES", 4 * GIB, minimum=64 * MIB),
            "sandbox_file_bytes": _int(env, "SANDBOX_FILE_BYTES", 1 * GIB, minimum=1 * MIB),
            "sandbox_max_processes": _int(env, "SANDBOX_MAX_PROCESSES", 512, minimum=8),
            "sandbox_uid": _int(env, "SANDBOX_UID", 65534, minimum=1),
            "webhook_allow_private": _bool(env, "WEBHOOK_ALLOW_PRIVATE", False),
            "webhook_max_attempts": _int(env, "WEBHOOK_MAX_ATTEMPTS", 6, minimum=1),
            "webhook_retry_base_delay_s": _float(env, "WEBHOOK_RETRY_BASE_DELAY", 10.0, minimum=0.0),
            "webhook_timeout_s": _float(env, "WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
            "sse_keepalive_s": _float(env, "SSE_KEEPALIVE_INTERVAL", 15.0, minimum=0.1),
            "sse_poll_s": _float(env, "SSE_POLL_INTERVAL", 0.5, minimum=0.05),
            "encryption_keys": _fernet_keys(env, "ENCRYPTION_KEY"),
            "extra": dict(env),
        }
        values["rate_limit_storage_url"] = _rate_limit_storage(
            get("RATE_LIMIT_STORAGE_URL"), values["broker_url"]
        )
        if values["daytona_snapshot"] and values["daytona_image"]:
            raise ConfigError("DAYTONA_IMAGE", "cannot be set together with DAYTONA_SNAPSHOT")
        if values["deployment_queue"] == values["deployment_dlq"]:
            raise ConfigError(
                "DEPLOYMENT_DLQ_NAME", "must differ from DEPLOYMENT_QUEUE_NAME", values["deployment_dlq"]
            )
        settings = cls(**values)
        if settings.gc_blob_grace_s < settings.step_time_limit_s:
            # A build stores its output before the transaction that records it, and only the grace
            # keeps gc from deleting it in between (retention.py): it must outlast the longest step.
            raise ConfigError(
                "GC_BLOB_GRACE",
                f"must be at least {settings.step_time_limit_s} s, the longest a step may run with"
                f" MAX_DEPLOYMENT_TIMEOUT={settings.max_deployment_timeout_ms}: gc must not delete"
                " a build's output before the build records it",
                get("GC_BLOB_GRACE") or None,  # unset: the default
            )
        # From now on no text the service shows (log, error, status, dead letter) carries them.
        register_secrets(settings.secret_values())
        settings.require_adapter("SANDBOX_BUILDER_DEFAULT_PROVIDER", settings.sandbox_provider)
        settings.require_adapter("DEPLOY_TARGET", settings.deploy_target)
        settings.require_adapter("OBJECT_STORE", settings.object_store)
        return settings

    def require_adapter(self, setting: str, name: str) -> None:
        """Raise ConfigError naming the first setting the chosen adapter needs and lacks."""
        for required in REQUIRED_SETTINGS.get((setting, name), ()):
            if not getattr(self, ENV_FIELDS[required]):
                raise ConfigError(required, f"is required when {setting} is {name}")
        if name == "s3" and bool(self.s3_access_key_id) != bool(self.s3_secret_access_key):
            # Both keys, or neither (then boto3 finds credentials on its own: an instance role...).
            lacking = "S3_SECRET_ACCESS_KEY" if self.s3_access_key_id else "S3_ACCESS_KEY_ID"
            raise ConfigError(lacking, "is required when the other S3 key is set")

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
    def step_time_limit_s(self) -> int:
        """When Celery kills a step still running: past its share of the deployment's budget, which
        the step enforces itself (celeryconfig.task_time_limit, which reads the same setting)."""
        return int(self.deployment_timeout_s * 1.2) + 60

    @property
    def heartbeat_interval_s(self) -> float:
        """Heartbeats come several times per timeout, so one late write never looks like a lost worker."""
        return min(self.heartbeat_timeout_s / 4, 10.0)

    def s3_client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``boto3.client("s3", ...)`` for the S3 API in the settings."""
        options: dict[str, Any] = {"region_name": self.s3_region}
        if self.s3_endpoint_url:
            options["endpoint_url"] = self.s3_endpoint_url
        if self.s3_access_key_id:
            options["aws_access_key_id"] = self.s3_access_key_id
            options["aws_secret_access_key"] = self.s3_secret_access_key
        return options

    def s3_botocore_config(self) -> dict[str, Any]:
        """Keyword arguments of ``botocore.config.Config`` that work against R2 as well as AWS S3.

        boto3 >= 1.36 adds a CRC32 checksum to every upload unless told to send one only when
        the operation requires it, and R2 refuses those trailers; path-style addressing is what
        MinIO and loopback test servers need, and R2 accepts it.
        """
        return {
            "signature_version": "s3v4",
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "s3": {"addressing_style": self.s3_addressing_style},
            # A few quick attempts inside one call; the step's own retries take over after that.
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 60,
        }

    def describe(self) -> dict[str, Any]:
        """Settings as shown to an operator (URLs with their passwords removed)."""
        shown: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in ("database_url", "broker_url", "rate_limit_storage_url"):
                value = redact_url(value)
            elif (f.name in SECRET_FIELDS or f.name == "metrics_token") and value:
                value = "***"
            elif f.name == "encryption_keys":
                value = ["***"] * len(value)
            shown[f.name] = str(value) if isinstance(value, Path) else value
        return shown

    def secret_values(self) -> set[str]:
        """The values of the service's own secrets, which must never be shown anywhere.

        They are the values of environment variables whose names say they hold a secret (API keys,
        tokens, passwords...), and the passwords inside the service's URLs.
        """
        found = {value.strip() for name, value in self.extra.items() if looks_secret(name) and value.strip()}
        for url in (self.database_url, self.broker_url, self.rate_limit_storage_url):
            password = url_password(url)
            if password:
                found.add(password)
        if self.metrics_token:
            found.add(self.metrics_token)
        found.update(self.encryption_keys)
        return found


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


def _url(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(name, "must be an absolute http(s) URL", raw)
    return raw.rstrip("/")


# S3 bucket naming rules (the subset every S3 API accepts, R2 included).
_BUCKET = re.compile(r"^(?!xn--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def _bucket(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if raw and not _BUCKET.match(raw):
        raise ConfigError(name, "must be a bucket name: 3 to 63 lower-case letters, digits and '-'", raw)
    return raw


def _pages_prefix(env: Mapping[str, str]) -> str:
    # Pages project names are [a-z0-9-], at most 58 characters; a project id adds 30 of them.
    raw = env.get("CLOUDFLARE_PAGES_PROJECT_PREFIX", "libra-").strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,27}|", raw):
        raise ConfigError(
            "CLOUDFLARE_PAGES_PROJECT_PREFIX", "may hold up to 28 lower-case letters, digits and '-'", raw
        )
    return raw


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not all(c.isalnum() or c in "-_." for c in raw):
        raise ConfigError(name, "may hold only letters, digits, '-', '_' and '.'", raw)
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(name, "must be 1 or 0 (true or false)", raw)


def _rate(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    try:
        limits.parse_many(raw)
    except ValueError:
        raise ConfigError(
            name, "must be a rate such as 60/minute or '10 per second; 500 per hour'", raw
        ) from None
    return raw


def _origins(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    origins = tuple(o.strip().lower().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ConfigError(
                name, "must list origins such as https://app.example.io or https://*.example.io", origin
            )
    return origins


def _domains(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    domains = tuple(d.strip().lower().rstrip(".") for d in env.get(name, "").split(",") if d.strip())
    for domain in domains:
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", domain):
            raise ConfigError(name, "must list domain names such as example.io (IDNA ASCII form)", domain)
    return domains


def _fernet_keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated Fernet keys (32 bytes, URL-safe base64), as Fernet.generate_key() makes them."""
    keys = tuple(k.strip() for k in env.get(name, "").split(",") if k.strip())
    for key in keys:
        try:
            if len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32:
                continue
        except (ValueError, UnicodeEncodeError):
            pass
        # The value is a secret: the error names the setting, never shows the value.
        raise ConfigError(
            name,
            "must hold Fernet keys (32 bytes, URL-safe base64; make one with "
            '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`)'
            ", separated by commas",
        )
    return keys


def _rate_limit_storage(raw: str, broker_url: str) -> str:
    """RATE_LIMIT_STORAGE_URL, by default the broker's Redis, else this process's memory."""
    if not raw:
        return broker_url if urlsplit(broker_url).scheme in ("redis", "rediss") else "memory://"
    if urlsplit(raw).scheme not in limits.storage.SCHEMES:
        raise ConfigError(
            "RATE_LIMIT_STORAGE_URL", "must be memory://, redis://... (a limits storage URL)", raw
        )
    return raw
