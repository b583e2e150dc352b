"""Broker topology beyond the work queues: the dead-letter exchange and queue."""

from __future__ import annotations

from celery import Celery
from kombu import Queue


def dead_letter_queue(app: Celery) -> Queue:
    return app.conf.dead_letter_queue


def declare_dead_letter_queue(app: Celery) -> None:
    """Declare ``deployment-dlx`` -> ``deployment-dlq``; workers never consume it.

    A worker declares only the queues it consumes, and a message dead-lettered to an exchange that
    does not exist is dropped without a word, so the topology is declared explicitly at start-up.
    """
    with app.connection_for_write() as conn:
        dead_letter_queue(app).bind(conn.default_channel).declare()
