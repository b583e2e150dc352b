"""``libra-deploy up``: the whole service in one process, with nothing to install.

The API (a threaded WSGI server on 127.0.0.1:$PORT) and a Celery worker (threads) share one runtime:
SQLite at ``$LIBRA_DATA_DIR/libra.db`` and the embedded broker (kombu's SQLAlchemy transport on
``$LIBRA_DATA_DIR/broker.db``), which other processes with the same LIBRA_DATA_DIR reach too, so the
operator commands work beside it. SIGINT or SIGTERM stops it: running steps get WORKER_STOP_GRACE_S
to finish; those still running then are stopped as a crash would stop them (their builds killed,
nothing more of them recorded) and resume at their step on the next start. The data stays.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from libra_deploy import accounts, auth
from libra_deploy.config import Settings
from libra_deploy.db import transaction
from libra_deploy.logging_config import configure_logging
from libra_deploy.migrate import upgrade as upgrade_schema
from libra_deploy.models import Organization, Project
from libra_deploy.redact import install_log_redaction
from libra_deploy.runtime import Runtime

DEMO_ORG = "Demo"
DEMO_EMAIL = "demo@libra-deploy.local"
WORKER_STOP_GRACE_S = 10.0


@click.command("migrate")
def migrate_command() -> None:
    """Upgrade the database schema to the latest revision."""
    upgrade_schema(Settings.from_env().database_url)
    click.echo("database schema is up to date", err=True)


def _bootstrap(session: Session, data_dir: Path) -> tuple[str, str]:
    """Create the demo organisation, user, project and token on first start; return (project, token)."""
    token_file = data_dir / "demo-token"
    org = session.scalars(select(Organization).where(Organization.name == DEMO_ORG)).first()
    if org is not None and token_file.exists():
        project = session.scalars(
            select(Project).where(Project.org_id == org.id).order_by(Project.created_at)
        ).first()
        return (project.id if project else ""), token_file.read_text().strip()
    org = org or accounts.create_organization(session, DEMO_ORG)
    user = accounts.create_user(session, org.id, DEMO_EMAIL)
    project = accounts.create_project(session, org.id, "demo-site")
    _row, token = auth.create_token(session, org_id=org.id, user_id=user.id, name="demo")
    # The data directory already holds the database itself; the demo token beside it is no wider
    # exposure, and it lets a restarted `up` print a token that works.
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return project.id, token


@click.command()
def up() -> None:
    """Run the API, a worker and the periodic jobs in one process (the embedded default).

    Work queued before a stop resumes after the next start: the outbox relay and the reaper find
    what the embedded broker lost with the process.
    """
    settings = Settings.from_env()
    configure_logging(settings)
    install_log_redaction(settings.secret_values())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_schema(settings.database_url)
    runtime = Runtime.from_settings(settings)
    with transaction(runtime.sessions) as session:
        project_id, token = _bootstrap(session, settings.data_dir)

    from tasks.embedded import EmbeddedScheduler, EmbeddedWorker
    from web import create_app
    from web.server import Server

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    worker = EmbeddedWorker(runtime)
    worker.start()
    scheduler = EmbeddedScheduler(runtime)
    scheduler.start()
    server = Server(create_app(runtime), "127.0.0.1", settings.port)
    server.start()
    base = f"http://127.0.0.1:{settings.port}"
    _wait_healthy(base, stop)
    if not stop.is_set():
        click.echo(
            f"libra-deploy is up\n"
            f"  API:      {base}\n"
            f"  Docs:     {base}/docs\n"
            f"  Token:    {token}\n"
            f"  Project:  {project_id}\n"
            f"  Data:     {settings.data_dir}\n"
            f"Press Ctrl+C to stop.",
            err=True,
        )
        sys.stderr.flush()
    stop.wait()
    click.echo("stopping...", err=True)
    server.stop()
    scheduler.stop()
    finished = worker.stop(WORKER_STOP_GRACE_S)
    runtime.close()
    click.echo("stopped", err=True)
    if not finished:
        # The pool's threads still run the interrupted steps, whose builds are dead and whose
        # commits are refused; the interpreter would wait for them to end. End now, as a crash
        # would: the reaper resumes those steps on the next start.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _wait_healthy(base: str, stop: threading.Event, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    if not stop.is_set():
        click.echo(f"libra-deploy: {base}/health did not answer healthy within {timeout_s:.0f} s", err=True)
        os._exit(1)
