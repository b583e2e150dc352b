"""The floor for our orchestration: a bare chain of six no-op Celery tasks.

Same broker, same Celery settings as the service (``celeryconfig``: late acks, prefetch 1, JSON, no
result backend, events on), its own queue. The last task of a chain records when it ran in Redis,
so the benchmark knows when each chain finished without a result backend.

Run its worker exactly as the service's: ``celery -A bench.bare_celery worker -P prefork -c 5``.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery, chain
from kombu import Exchange, Queue

QUEUE = "bench-bare"
DONE_KEY = "bench:bare:done"

app = Celery("bench_bare")
app.config_from_object("celeryconfig")
app.conf.update(
    task_queues=(Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE),),
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    beat_schedule={},
)

_redis: redis.Redis | None = None


def _counter() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    return _redis


@app.task(name="bare.noop")
def noop(unit_id: str) -> None:
    """One step of the chain that does nothing."""


@app.task(name="bare.last")
def last(unit_id: str) -> None:
    """The sixth step: record when the chain finished."""
    _counter().hset(DONE_KEY, unit_id, repr(time.time()))


def bare_chain(unit_id: str) -> chain:
    steps = [app.signature("bare.noop", args=(unit_id,), immutable=True) for _ in range(5)]
    return chain(*steps, app.signature("bare.last", args=(unit_id,), immutable=True))
