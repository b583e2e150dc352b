"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, tuned for several processes.

``sqla+sqlite:///$LIBRA_DATA_DIR/broker.db`` lets the worker threads of ``libra-deploy up`` and the
operator commands of other processes share queues without a server. This subclass of kombu's
transport (registered under kombu's own ``sqla`` alias when the Celery app is imported) adds what
the stock one lacks for that use:

* transport options meant for kombu (``polling_interval``) are not passed on to
  ``create_engine``, which refuses unknown arguments;
* SQLite waits for a lock held by another process (busy timeout, WAL) instead of failing at once;
* a short default polling interval, so a chain of six tasks does not wait a second per hop;
* a delivered message leaves the table. kombu's own transport only marks it invisible and keeps it
  forever, so the broker file of a long-running ``libra-deploy up`` grew by every task it ever ran
  (six per deployment, and the beat's). Nothing reads an invisible row again: a message taken but
  not acknowledged goes back by being published anew (kombu's restore), as it did before. Rows an
  earlier version left behind are removed once per process, when the broker is first opened.
"""

from __future__ import annotations

import threading
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from sqlalchemy import Engine, create_engine, delete, event, text, true

BUSY_TIMEOUT_S = 30
#: Transport options that are kombu's own, not create_engine arguments.
KOMBU_OPTIONS = frozenset(
    {
        "polling_interval",
        "queue_tablename",
        "message_tablename",
        "callback",
        "errback",
        "max_retries",
        "interval_start",
        "interval_step",
        "interval_max",
        "retry_errors",
    }
)


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Engine:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in KOMBU_OPTIONS}
        url: str = conninfo.hostname
        if not url.startswith("sqlite"):
            return create_engine(url, **options)
        engine = create_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}, **options
        )

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
            cursor.close()

        return engine

    def _open(self) -> Any:
        opened = super()._open()
        url: str = self.connection.client.hostname
        with _SWEEP_LOCK:
            due = url not in _SWEPT
            _SWEPT.add(url)
        if due:
            engine, _sessions = opened
            with engine.begin() as conn:
                conn.execute(delete(self.message_cls.__table__).where(self.message_cls.visible.is_(False)))
        return opened

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """Take the oldest message of ``queue`` off the table."""
        found = self._get_or_create(queue)
        session = self.session
        if session.bind.dialect.name == "sqlite":
            # Take the write lock before reading, so that two processes never take the same message.
            session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            message = (
                session.query(self.message_cls)
                .with_for_update()
                .filter(self.message_cls.queue_id == found.id, self.message_cls.visible == true())
                .order_by(self.message_cls.sent_at, self.message_cls.id)
                .first()
            )
            if message is None:
                raise Empty()
            payload = loads(bytes_to_str(message.payload))
            session.delete(message)
            return payload
        finally:
            session.commit()


#: Broker URLs whose leftover delivered messages this process has removed.
_SWEPT: set[str] = set()
_SWEEP_LOCK = threading.Lock()


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = 0.05


TRANSPORT_ALIASES["sqla"] = TRANSPORT_ALIASES["sqlalchemy"] = f"{__name__}:Transport"
