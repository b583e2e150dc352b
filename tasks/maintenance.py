"""Periodic jobs, sent by ``celery -A tasks beat`` (and run in-process by ``libra-deploy up``)."""

from __future__ import annotations

from tasks import recovery
from tasks.app import app
from tasks.runtime import get_runtime


@app.task(name="maintenance.relay_outbox", ignore_result=True)
def relay_outbox() -> None:
    recovery.relay_outbox(get_runtime())


@app.task(name="maintenance.reap", ignore_result=True)
def reap() -> None:
    recovery.reap(get_runtime())
