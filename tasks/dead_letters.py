"""The dead-letter queue on the broker: publish to it, look into it without consuming, take from it.

Works the same on Redis, RabbitMQ and the embedded broker through kombu's queue API. Looking is a
get of every message followed by a requeue of each (on Redis the order of the queue may change
then; the listing is sorted by time anyway). Messages the broker dead-lettered by itself (a
rejected Celery task message on RabbitMQ) have no envelope of ours; they are described from their
Celery headers so that they can be listed and replayed too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection
from kombu.message import Message

from tasks.app import app
from tasks.topology import dead_letter_queue


def publish(envelope: dict[str, Any]) -> None:
    """Publish one dead letter (the JSON envelope of libra_deploy.dead_letters) to deployment-dlx."""
    queue = dead_letter_queue(app)
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            envelope,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            serializer="json",
            delivery_mode=2,
            retry=False,
        )


def describe(message: Message) -> dict[str, Any]:
    """The envelope of a dead-letter message, ours or the broker's own."""
    payload = message.decode()
    if isinstance(payload, dict) and str(payload.get("id", "")).startswith("dl_"):
        return payload
    headers = message.headers or {}
    task = str(headers.get("task", "unknown"))
    args = payload[0] if isinstance(payload, list | tuple) and payload else []
    deaths = headers.get("x-death") or [{}]
    return {
        "id": str(headers.get("id") or message.delivery_tag),
        "deploymentId": args[0] if args else None,
        "step": task.removeprefix("deploy."),
        "task": task,
        "args": list(args),
        "error": {
            "type": "DeadLetteredByBroker",
            "code": "BROKER_DEAD_LETTER",
            "message": f"dead-lettered by the broker ({deaths[0].get('reason', 'rejected')})",
            "retryable": True,
        },
        "attempts": int(headers.get("retries") or 0) + 1,
        "failedAt": None,
    }


@contextmanager
def _held_messages(conn: Connection) -> Iterator[list[Message]]:
    """Every message of the dead-letter queue, taken unacknowledged; those not acked go back."""
    queue = dead_letter_queue(app).bind(conn.default_channel)
    queue.declare()
    held: list[Message] = []
    try:
        while (message := queue.get(no_ack=False)) is not None:
            held.append(message)
        yield held
    finally:
        for message in held:
            if not message.acknowledged:
                message.requeue()


def peek() -> list[dict[str, Any]]:
    """The envelopes in the dead-letter queue, without consuming them."""
    with app.connection_for_write() as conn, _held_messages(conn) as held:
        return [describe(m) for m in held]


def take(wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Acknowledge (remove) the messages whose envelope ``wanted`` accepts; return their envelopes."""
    taken = []
    with app.connection_for_write() as conn, _held_messages(conn) as held:
        for message in held:
            envelope = describe(message)
            if wanted(envelope):
                message.ack()
                taken.append(envelope)
    return taken
