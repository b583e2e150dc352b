"""The one place a deployment's chain of tasks is built and published."""

from __future__ import annotations

import logging

from celery import chain

from libra_deploy.steps import STEPS
from tasks.app import app

logger = logging.getLogger(__name__)


def deployment_chain(deployment_id: str, start: str = "validate") -> chain:
    """validate -> sync -> sandbox -> build -> deploy -> cleanup, from ``start`` on."""
    return chain(
        *(
            app.signature(f"deploy.{step}", args=(deployment_id,), immutable=True)
            for step in STEPS[STEPS.index(start) :]
        )
    )


def start_deployment(deployment_id: str, start: str = "validate") -> None:
    """Publish a committed deployment's chain. Call only after the commit that recorded it.

    Fails fast when the broker is away (no publish retries): the caller leaves the deployment to
    the outbox relay, which publishes it once the broker answers again.
    """
    deployment_chain(deployment_id, start).apply_async(retry=False)


def enqueue_cleanup(deployment_id: str) -> None:
    """Publish the cleanup step alone (after a failure or a cancel the chain does not reach it)."""
    app.signature("deploy.cleanup", args=(deployment_id,), immutable=True).apply_async(retry=False)


def revoke(task_id: str) -> None:
    """Tell the workers not to start ``task_id`` (best effort: the embedded broker has no broadcast)."""
    try:
        app.control.revoke(task_id)
    except Exception:
        logger.info("could not broadcast the revocation of %s", task_id, exc_info=True)


def broker_reachable() -> bool:
    """Whether the broker answers now (for /health): one connection attempt, no retries."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            conn.default_channel  # noqa: B018 - opening a channel is the real check on every transport
        return True
    except Exception:
        return False
