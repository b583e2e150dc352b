"""Structured logs: one JSON object per line, with the request id or the deployment id it concerns.

:func:`configure_logging` is the one place logging is set up; the web app (``create_app``), the
Celery worker (its ``setup_logging`` signal) and ``libra-deploy up`` call it. Each line carries
``timestamp``, ``level``, ``logger``, ``message``, and, when known, ``request_id`` (the web request
being served: X-Request-ID, or one generated) and ``deployment_id`` (the deployment a task is
working on). Those two live in context variables, set with :func:`bind` around a request or a task,
so every line logged meanwhile gets them, whichever module logs it.

Filters that every line must pass (the context filter here, a redaction filter...) are listed in
:data:`FILTERS` and attached to every handler this module installs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from libra_deploy.config import Settings

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
deployment_id: ContextVar[str | None] = ContextVar("deployment_id", default=None)

#: Marks the handler this module installed, so that configuring again replaces it.
_HANDLER_NAME = "libra-deploy-json"


class ContextFilter(logging.Filter):
    """Adds the request id and the deployment id of the current context to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "deployment_id", None) is None:
            record.deployment_id = deployment_id.get()
        return True


#: Every handler installed by configure_logging gets each of these (add one here to apply it everywhere).
FILTERS: list[logging.Filter] = [ContextFilter()]


def json_formatter() -> JsonFormatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}{request_id}{deployment_id}",
        style="{",
        rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record of the process, as JSON lines, to ``stream`` (stderr by default)."""
    # Bound now: a Celery worker later replaces sys.stderr with a proxy that logs what it is given.
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(json_formatter())
    for log_filter in FILTERS:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handler


@contextmanager
def bind(*, request: str | None = None, deployment: str | None = None) -> Iterator[None]:
    """Attach a request id and/or a deployment id to every line logged inside the block."""
    tokens = []
    if request is not None:
        tokens.append((request_id, request_id.set(request)))
    if deployment is not None:
        tokens.append((deployment_id, deployment_id.set(deployment)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
