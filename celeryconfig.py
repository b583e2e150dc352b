"""Celery settings, read from the environment. Imports os and kombu only, nothing of ours.

Topology (DESIGN.md section 6): exchange ``deployment`` (direct) routes to the work queue
``deployment-queue``; exchange ``deployment-dlx`` (direct) routes to ``deployment-dlq``. Only the
work queues are in ``task_queues``, so a plain ``celery -A tasks worker`` never consumes a dead
letter; the dead-letter exchange and queue are declared by the worker at start-up and read only by
``libra-deploy dlq``.

The defaults match ``libra_deploy.config.Settings`` (a test checks it); that module validates the
values and stops start-up with a clear line when one is malformed.
"""

import os
from pathlib import Path

from kombu import Exchange, Queue

_data_dir = Path(os.environ.get("LIBRA_DATA_DIR", "").strip() or "./.libra").expanduser().resolve()
broker_url = os.environ.get("CELERY_BROKER_URL", "").strip() or f"sqla+sqlite:///{_data_dir / 'broker.db'}"
_amqp = broker_url.startswith(("amqp", "pyamqp"))
_embedded = broker_url.startswith("sqla+")

deployment_queue_name = os.environ.get("DEPLOYMENT_QUEUE_NAME", "").strip() or "deployment-queue"
deployment_dlq_name = os.environ.get("DEPLOYMENT_DLQ_NAME", "").strip() or "deployment-dlq"


def _number(name: str, default: int) -> int:
    # A malformed value falls back here; libra_deploy.config rejects it with a clear line at start-up.
    try:
        return int(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


_timeout_s = _number("MAX_DEPLOYMENT_TIMEOUT", 600_000) / 1000

deployment_exchange = Exchange("deployment", type="direct", durable=True)
dead_letter_exchange = Exchange("deployment-dlx", type="direct", durable=True)

# On RabbitMQ a message the broker rejects (or that dies with its worker past the redelivery limit)
# is dead-lettered natively; on Redis and the embedded broker the task base publishes it itself.
_dead_letter_args = (
    {"x-dead-letter-exchange": "deployment-dlx", "x-dead-letter-routing-key": deployment_dlq_name}
    if _amqp
    else None
)
webhook_queue_name = "deployment-webhooks"
task_queues = (
    Queue(
        deployment_queue_name,
        deployment_exchange,
        routing_key=deployment_queue_name,
        queue_arguments=_dead_letter_args,
        durable=True,
    ),
    # Webhook deliveries: their own queue, so a slow receiver never holds up a deployment message.
    Queue(webhook_queue_name, deployment_exchange, routing_key=webhook_queue_name, durable=True),
)
task_routes = {"webhooks.deliver": {"queue": webhook_queue_name, "routing_key": webhook_queue_name}}
dead_letter_queue = Queue(
    deployment_dlq_name, dead_letter_exchange, routing_key=deployment_dlq_name, durable=True
)
task_default_queue = deployment_queue_name
task_default_exchange = "deployment"
task_default_routing_key = deployment_queue_name
task_create_missing_queues = False

# JSON only: the dead-letter queue is read and replayed by people.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True  # the database holds every status

# One message at a time per slot, acknowledged after the step: a worker that dies mid-step leaves
# the message to be redelivered, and holds nothing it is not running.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_concurrency = _number("CELERY_WORKER_CONCURRENCY", 5)

# Redis redelivers an unacknowledged message after the visibility timeout even if its worker is
# still running it, so it must outlast the longest deployment by a wide margin.
_visibility_timeout = max(3600, int(_timeout_s * 3))
broker_transport_options: dict[str, object]
if _amqp:
    broker_transport_options = {"confirm_publish": True}
elif _embedded:
    # The embedded broker polls a SQLite file (tasks/broker.py); a short interval keeps a six-step
    # chain quick.
    broker_transport_options = {"polling_interval": 0.05}
else:
    broker_transport_options = {"visibility_timeout": _visibility_timeout}
# Hard limit per task (prefork only; the threads pool ignores it, which is why steps enforce their
# own deadlines in the subprocess or the provider call). Settings.step_time_limit_s is the same.
task_time_limit = int(_timeout_s * 1.2) + 60
broker_connection_retry_on_startup = True
broker_connection_timeout = 5
worker_cancel_long_running_tasks_on_connection_loss = True
worker_hijack_root_logger = False

# The periodic jobs (recovery.py, retention.py), sent by `celery -A tasks beat`.
beat_schedule_filename = str(_data_dir / "celerybeat-schedule")
beat_schedule = {
    "relay-outbox": {
        "task": "maintenance.relay_outbox",
        "schedule": _seconds("OUTBOX_RELAY_INTERVAL", 5.0),
        "options": {"expires": _seconds("OUTBOX_RELAY_INTERVAL", 5.0)},
    },
    "reap": {
        "task": "maintenance.reap",
        "schedule": _seconds("REAPER_INTERVAL", 15.0),
        "options": {"expires": _seconds("REAPER_INTERVAL", 15.0)},
    },
    "collect-garbage": {
        "task": "maintenance.collect_garbage",
        "schedule": _seconds("GC_INTERVAL", 3600.0),
        "options": {"expires": _seconds("GC_INTERVAL", 3600.0)},
    },
}

# Flower. The embedded broker has no fanout exchanges, so it carries no events.
worker_send_task_events = not _embedded
task_send_sent_event = not _embedded
