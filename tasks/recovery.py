"""Publishing what the recovery jobs claim (see libra_deploy/recovery.py)."""

from __future__ import annotations

import logging

from libra_deploy import dead_letters as letters
from libra_deploy import recovery, webhooks
from libra_deploy.db import transaction, utcnow
from libra_deploy.runtime import Runtime
from tasks import dead_letters
from tasks.pipeline import publish_webhooks, send_webhook, start_deployment

logger = logging.getLogger(__name__)


def relay_outbox(runtime: Runtime) -> recovery.Claimed:
    """Publish deployments and dead letters that were committed but never reached the broker."""
    with transaction(runtime.sessions) as session:
        claimed = recovery.claim_outbox(session, utcnow())
    _publish(runtime, claimed)
    publish_webhooks(runtime)
    return claimed


def reap(runtime: Runtime) -> recovery.Claimed:
    """Publish again the deployments that stopped moving; give up those that kill their workers."""
    with transaction(runtime.sessions) as session:
        claimed = recovery.claim_stalled(session, runtime.settings, utcnow())
    for dispatch in claimed.dispatches:
        logger.warning("resuming %s at %s: %s", dispatch.deployment_id, dispatch.start, dispatch.reason)
    _publish(runtime, claimed)
    _republish_overdue_webhooks(runtime)
    return claimed


def _republish_overdue_webhooks(runtime: Runtime) -> None:
    """Webhook attempts long past due lost their message (a broker restart): send them again."""
    with transaction(runtime.sessions) as session:
        overdue = webhooks.claim_overdue(session, runtime.settings, utcnow())
    for delivery_id in overdue:
        try:
            send_webhook(delivery_id)
        except Exception:
            # Still overdue: the next sweep tries again.
            logger.warning("could not publish webhook delivery %s", delivery_id, exc_info=True)


def _publish(runtime: Runtime, claimed: recovery.Claimed) -> None:
    refused = []
    for dispatch in claimed.dispatches:
        try:
            start_deployment(dispatch.deployment_id, dispatch.start)
        except Exception:
            logger.warning("could not publish %s; will try again", dispatch.deployment_id, exc_info=True)
            refused.append(dispatch.deployment_id)
    for letter in claimed.dead_letters:
        publish_dead_letter(runtime, letter.id, letter.message)
    if refused:
        with transaction(runtime.sessions) as session:
            recovery.mark_unpublished(session, refused)


def publish_dead_letter(runtime: Runtime, letter_id: str, envelope: dict) -> bool:
    """Publish a recorded dead letter; when the broker is away the outbox relay publishes it later."""
    try:
        dead_letters.publish(envelope)
    except Exception:
        logger.warning("could not publish dead letter %s; will try again", letter_id, exc_info=True)
        return False
    with transaction(runtime.sessions) as session:
        letters.mark_published(session, letter_id)
    return True
