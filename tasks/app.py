"""The Celery application: configured from celeryconfig.py, with the step tasks registered."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun, worker_init, worker_process_init

import tasks.broker  # noqa: F401 - registers the embedded broker's transport before any connection
from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError

try:
    # Every process that loads the Celery app (worker, beat, flower, the CLI) checks the settings
    # first, so a malformed one stops it with one line instead of a traceback later.
    Settings.from_env()
except ConfigError as exc:
    sys.exit(f"libra-deploy: {exc}")

app = Celery("libra_deploy", include=["tasks.steps", "tasks.maintenance", "tasks.webhooks"])
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


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    """JSON lines, as the web process writes them (connecting here keeps Celery's own setup out)."""
    from libra_deploy.logging_config import configure_logging

    configure_logging(Settings.from_env())


@task_prerun.connect
def _bind_deployment(task: Any = None, args: Any = None, **_: Any) -> None:
    # Every line logged while a step runs names its deployment (the steps' only argument).
    from libra_deploy.logging_config import deployment_id

    if task is not None and task.name.startswith("deploy.") and args:
        task.request.log_context_token = deployment_id.set(str(args[0]))


@task_postrun.connect
def _unbind_deployment(task: Any = None, **_: Any) -> None:
    from libra_deploy.logging_config import deployment_id

    token = getattr(task.request, "log_context_token", None) if task is not None else None
    if token is not None:
        deployment_id.reset(token)
        task.request.log_context_token = None
