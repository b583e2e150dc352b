"""The Celery application: configured from celeryconfig.py, with the step tasks registered."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init

import tasks.broker  # noqa: F401 - registers the embedded broker's transport before any connection
from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError

try:
    # Every process that loads the Celery app (worker, beat, flower, the CLI) checks the settings
    # first, so a malformed one stops it with one line instead of a traceback later.
    Settings.from_env()
except ConfigError as exc:
    sys.exit(f"libra-deploy: {exc}")

app = Celery("libra_deploy", include=["tasks.steps", "tasks.maintenance"])
app.config_from_object("celeryconfig")


@worker_init.connect
def _prepare_worker(sender: Any = None, **_: Any) -> None:
    """Check the settings, and declare the dead-letter queue, before the first message is taken."""
    from libra_deploy.redact import install_log_redaction
    from tasks.runtime import get_runtime
    from tasks.topology import declare_dead_letter_queue

    runtime = get_runtime()
    # Nothing the worker logs may show a secret of the service.
    install_log_redaction(runtime.settings.secret_values())
    if runtime.settings.sandbox_provider == "local":
        # Says at start-up, in the log, when builds cannot be isolated with bubblewrap here.
        runtime.sandbox()
    declare_dead_letter_queue(app)


@worker_process_init.connect
def _forget_parent_runtime(**_: Any) -> None:
    # A prefork child must not share the parent's database connections.
    from tasks.runtime import reset_runtime

    reset_runtime()
