"""The webhook delivery task: one signed POST per attempt, retried with backoff on its own queue."""

from __future__ import annotations

import logging

from celery import Task

from libra_deploy import webhooks
from libra_deploy.db import transaction, utcnow
from libra_deploy.logging_config import bind
from tasks.app import app
from tasks.runtime import get_runtime

logger = logging.getLogger(__name__)


@app.task(name="webhooks.deliver", bind=True, ignore_result=True, acks_late=True, max_retries=None)
def deliver(self: Task, delivery_id: str) -> None:
    """Send one attempt of a delivery; the attempt count and the give-up are kept in the database."""
    runtime = get_runtime()
    with transaction(runtime.sessions) as session:
        attempt = webhooks.begin_attempt(session, delivery_id, utcnow())
    if attempt is None:
        return
    with bind(deployment=attempt.deployment_id):
        result = webhooks.send(attempt, runtime.settings)
        with transaction(runtime.sessions) as session:
            delay = webhooks.finish_attempt(session, runtime.settings, delivery_id, result, utcnow())
        if result.ok:
            logger.info("webhook delivery %s (%s) delivered", delivery_id, attempt.event)
            return
        if delay is None:
            logger.warning(
                "webhook delivery %s failed for good after %d attempts: %s",
                delivery_id,
                attempt.number,
                result.error,
            )
            return
        logger.info(
            "webhook delivery %s attempt %d failed (%s); next in %.1f s",
            delivery_id,
            attempt.number,
            result.error,
            delay,
        )
    raise self.retry(countdown=delay)
