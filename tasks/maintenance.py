"""Periodic jobs, sent by ``celery -A tasks beat`` (and run in-process by ``libra-deploy up``).

Each is a thin task over one function of the core, which is safe to run twice at once.
"""

from __future__ import annotations

from libra_deploy import retention
from tasks import recovery
from tasks.app import app
from tasks.runtime import get_runtime


@app.task(name="maintenance.relay_outbox", ignore_result=True)
def relay_outbox() -> None:
    recovery.relay_outbox(get_runtime())


@app.task(name="maintenance.reap", ignore_result=True)
def reap() -> None:
    recovery.reap(get_runtime())


@app.task(name="maintenance.collect_garbage", ignore_result=True)
def collect_garbage() -> None:
    retention.collect_garbage(get_runtime())
