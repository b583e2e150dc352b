"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, tuned for several processes.

``sqla+sqlite:///$LIBRA_DATA_DIR/broker.db`` lets the worker threads of ``libra-deploy up`` and the
operator commands of other processes share queues without a server. This subclass of kombu's
transport (registered under kombu's own ``sqla`` alias when the Celery app is imported) adds what
the stock one lacks for that use:

* transport options meant for kombu (``polling_interval``) are not passed on to
  ``create_engine``, which refuses unknown arguments;
* SQLite waits for a lock held by another process (busy timeout, WAL) instead of failing at once;
* a short default polling interval, so a chain of six tasks does not wait a second per hop.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import Engine, create_engine, event

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


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = 0.05


TRANSPORT_ALIASES["sqla"] = TRANSPORT_ALIASES["sqlalchemy"] = f"{__name__}:Transport"
