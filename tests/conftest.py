"""Test fixtures: the real services, a real worker, real HTTP.

The stack is chosen once per pytest process by ``LIBRA_TEST_STACK`` (the README's test command runs
the suite once per stack):

``postgres-redis`` (default)  PostgreSQL (a fresh database per run) and Redis (a database of its own)
``postgres-rabbitmq``         PostgreSQL and RabbitMQ (a fresh virtual host per run)
``embedded``                  SQLite and the embedded broker, as ``libra-deploy up`` runs them

The settings are put in the environment here, before anything imports ``tasks`` (celeryconfig reads
the environment when it is imported).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

STACK = os.environ.get("LIBRA_TEST_STACK", "postgres-redis")
STACKS = ("postgres-redis", "postgres-rabbitmq", "embedded")
if STACK not in STACKS:
    raise pytest.UsageError(f"LIBRA_TEST_STACK must be one of {', '.join(STACKS)}, not {STACK!r}")

PG_ADMIN_URL = os.environ.get("LIBRA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LIBRA_TEST_REDIS_URL", "redis://127.0.0.1:6379")
RUN_ID = uuid.uuid4().hex[:10]
REDIS_LOCK = "libra-test-run"


def _claim_redis_db() -> int:
    """A Redis database for this run alone, so that runs on one machine never share a queue.

    ``LIBRA_TEST_REDIS_DB`` picks one; otherwise the first empty database this run can lock is
    taken (the lock expires, so a crashed run gives its database back within the hour).
    """
    import redis

    forced = os.environ.get("LIBRA_TEST_REDIS_DB")
    if forced:
        return int(forced)
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        if client.dbsize() == 0 and client.set(REDIS_LOCK, RUN_ID, nx=True, ex=3600):
            return db
    raise pytest.UsageError(f"no free database on the Redis at {REDIS_URL}: set LIBRA_TEST_REDIS_DB")


DATA_DIR = Path(tempfile.mkdtemp(prefix="libra-test-"))
PG_DATABASE = f"libra_test_{RUN_ID}"
RABBIT_VHOST = f"libra_test_{RUN_ID}"


def _pg_url(database: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{database}"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


os.environ.update(
    {
        "LIBRA_DATA_DIR": str(DATA_DIR),
        "ENVIRONMENT": "test",
        "STEP_RETRY_BASE_DELAY": "0.2",
        "PUBLIC_URL": "http://testserver",
        # Webhook receivers of the tests listen on loopback, and retries should not take minutes.
        "WEBHOOK_ALLOW_PRIVATE": "1",
        "WEBHOOK_RETRY_BASE_DELAY": "0.2",
        "SSE_POLL_INTERVAL": "0.1",
    }
)
if STACK == "embedded":
    os.environ["DATABASE_URL"] = f"sqlite:///{DATA_DIR / 'libra.db'}"
    os.environ.pop("CELERY_BROKER_URL", None)
else:
    os.environ["DATABASE_URL"] = _pg_url(PG_DATABASE)
    if STACK == "postgres-redis":
        REDIS_DB = _claim_redis_db()
        os.environ["CELERY_BROKER_URL"] = f"{REDIS_URL}/{REDIS_DB}"
    else:
        os.environ["CELERY_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{RABBIT_VHOST}"


def pytest_report_header(config: pytest.Config) -> str:
    return f"libra-deploy stack: {STACK} (data in {DATA_DIR})"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Give the claimed Redis database back, also when no test used the services (whose teardown
    empties it): otherwise every short run on the machine held a database for an hour, and the
    sixteenth found none free."""
    if STACK == "postgres-redis" and not os.environ.get("LIBRA_TEST_REDIS_DB"):
        import redis

        client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
        if client.get(REDIS_LOCK) == RUN_ID.encode():
            client.delete(REDIS_LOCK)


@pytest.fixture(scope="session")
def services() -> object:
    """Create this run's database, broker namespace and data directory; remove them afterwards."""
    import tests.fakes  # noqa: F401 - registers the fake adapters before anything uses the registry

    if STACK != "embedded":
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    if STACK == "postgres-redis":
        import redis

        client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
        client.flushdb()
        client.set(REDIS_LOCK, RUN_ID, ex=24 * 3600)
    if STACK == "postgres-rabbitmq":
        _rabbitmqctl("add_vhost", RABBIT_VHOST)
        _rabbitmqctl("set_permissions", "-p", RABBIT_VHOST, "guest", ".*", ".*", ".*")
    yield STACK
    if STACK != "embedded":
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    if STACK == "postgres-redis":
        redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()
    if STACK == "postgres-rabbitmq":
        _rabbitmqctl("delete_vhost", RABBIT_VHOST)
    shutil.rmtree(DATA_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(services: object):
    from libra_deploy.config import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def runtime(settings):
    from libra_deploy.migrate import upgrade
    from libra_deploy.runtime import Runtime
    from tasks.runtime import set_runtime

    upgrade(settings.database_url)
    rt = Runtime.from_settings(settings)
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


@pytest.fixture(scope="session")
def worker(runtime):
    """A real Celery worker (threads) consuming this run's broker."""
    from celery.contrib.testing.worker import start_worker

    from tasks import app
    from tasks.topology import declare_dead_letter_queue

    declare_dead_letter_queue(app)
    with start_worker(
        app,
        pool="threads",
        concurrency=5,
        queues=[q.name for q in app.conf.task_queues],
        perform_ping_check=False,
        shutdown_timeout=30,
        loglevel="WARNING",
    ) as w:
        yield w


@pytest.fixture(scope="session")
def app(runtime):
    from web import create_app

    flask_app = create_app(runtime)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def tenant(runtime):
    """A fresh organisation with a user, an API token and a project."""
    from tests.helpers import make_tenant

    return make_tenant(runtime)
