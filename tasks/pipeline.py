"""The one place a deployment's chain of tasks is built and published."""

from __future__ import annotations

import logging

from celery import chain

from libra_deploy import webhooks
from libra_deploy.db import transaction
from libra_deploy.runtime import Runtime
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


def hand_over_slots(deployment_ids: tuple[str, ...]) -> None:
    """Wake the waiters whose turn for a sandbox slot has come. Call after the commit that freed it.

    Each gets its chain again from its sandbox step on, not the sandbox step alone: the waiter's
    pending retry carries the rest of its chain too, but it may be due only in slots.MAX_WAIT_S; the
    chain must not wait for it. So two messages carry the chain, and the step's row decides: the one
    that runs the sandbox step goes on, the other finds the step in progress or completed under
    another task id and stops there (libra_deploy.steps.runner). A wake-up that cannot be
    published is only a delay: the waiter's retry still asks for the slot.
    """
    for deployment_id in deployment_ids:
        try:
            start_deployment(deployment_id, "sandbox")
        except Exception:
            logger.warning("could not hand a sandbox slot over to %s", deployment_id, exc_info=True)


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


def send_webhook(delivery_id: str, countdown: float = 0) -> None:
    """Publish one attempt of a webhook delivery on the queue deployment-webhooks."""
    app.signature("webhooks.deliver", args=(delivery_id,), immutable=True).apply_async(
        retry=False, countdown=countdown or None
    )


def publish_webhooks(runtime: Runtime, deployment_id: str | None = None) -> list[str]:
    """Publish the webhook deliveries recorded but not yet published (of one deployment, or all).

    Call after the commit that recorded them. Those the broker refuses are left to the outbox relay.
    """
    with transaction(runtime.sessions) as session:
        claimed = webhooks.claim_unpublished(session, deployment_id)
    refused = []
    for delivery_id in claimed:
        try:
            send_webhook(delivery_id)
        except Exception:
            logger.warning(
                "could not publish webhook delivery %s; will try again", delivery_id, exc_info=True
            )
            refused.append(delivery_id)
    if refused:
        with transaction(runtime.sessions) as session:
            webhooks.mark_unpublished(session, refused)
    return [d for d in claimed if d not in refused]


def queue_depths(names: list[str]) -> dict[str, int | None]:
    """Messages waiting in each queue, read from the broker (None when it cannot say).

    A passive declare answers with the message count on every transport (RabbitMQ, Redis, the
    embedded broker) without creating or consuming anything.
    """
    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            # RabbitMQ must not redeclare (queue arguments differ per queue); on Redis and the embedded
            # broker an empty queue does not exist until declared, and declaring it creates nothing.
            passive = conn.transport.driver_type == "amqp"
            for name in names:
                channel = conn.channel()
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=passive).message_count)
                except Exception:
                    depths[name] = None
                finally:
                    try:
                        channel.close()
                    except Exception:
                        logger.debug("closing a channel failed", exc_info=True)
    except Exception:
        logger.info("the broker did not answer for queue depths", exc_info=True)
        return dict.fromkeys(names)
    return depths
