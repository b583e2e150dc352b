"""The embedded broker (kombu's SQLAlchemy transport on SQLite, tasks/broker.py) keeps no message it
delivered, and still gives back one that was taken but never acknowledged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kombu import Connection
from kombu.transport import sqlalchemy as kombu_sqla

import tasks.broker  # noqa: F401 - registers the embedded broker's transport under sqla+sqlite://

QUEUE = "embedded-broker-test"


def _rows(database: Path) -> list[tuple[bool, str]]:
    """(visible, payload) of every message in the broker's table."""
    with sqlite3.connect(database) as db:
        return [
            (bool(visible), payload)
            for visible, payload in db.execute("SELECT visible, payload FROM kombu_message")
        ]


def test_delivered_messages_leave_the_table_in_order(tmp_path):
    database = tmp_path / "broker.db"
    with Connection(f"sqla+sqlite:///{database}") as conn:
        queue = conn.SimpleQueue(QUEUE)
        for n in range(5):
            queue.put({"n": n})
        assert len(_rows(database)) == 5

        received = [queue.get(timeout=5) for _ in range(5)]
        for message in received:
            message.ack()
        queue.close()

    assert [message.payload["n"] for message in received] == [0, 1, 2, 3, 4]
    assert _rows(database) == []


def test_a_message_taken_but_not_acknowledged_is_delivered_again(tmp_path):
    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with Connection(url) as conn:
        queue = conn.SimpleQueue(QUEUE)
        queue.put({"n": 1})
        taken = queue.get(timeout=5)
        assert taken.payload == {"n": 1}
        # Closed without an acknowledgement, as a worker shutting down with a task in hand.
        queue.close()

    with Connection(url) as conn:
        queue = conn.SimpleQueue(QUEUE)
        again = queue.get(timeout=5)
        assert again.payload == {"n": 1}
        again.ack()
        queue.close()
    assert _rows(tmp_path / "broker.db") == []


def test_delivered_messages_an_earlier_version_kept_are_removed_when_the_broker_opens(tmp_path):
    database = tmp_path / "broker.db"
    url = f"sqla+sqlite:///{database}"
    # kombu's own transport, as the service used it before: a delivered message stays, invisible.
    with Connection(f"sqlite:///{database}", transport=kombu_sqla.Transport) as conn:
        queue = conn.SimpleQueue(QUEUE)
        queue.put({"n": "delivered before"})
        queue.get(timeout=5).ack()
        queue.put({"n": "waiting"})
        queue.close()
    assert [visible for visible, _payload in _rows(database)] == [False, True]

    with Connection(url) as conn:
        queue = conn.SimpleQueue(QUEUE)
        waiting = queue.get(timeout=5)
        assert waiting.payload == {"n": "waiting"}
        waiting.ack()
        queue.close()
    assert _rows(database) == []
