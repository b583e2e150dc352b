"""Database plumbing: the declarative base, engines for PostgreSQL and SQLite, and the session scope.

PostgreSQL (psycopg 3) is the production database. SQLite is the embedded default of
``libra-deploy up``; it runs in WAL mode with a busy timeout, and every transaction begins with
``BEGIN IMMEDIATE`` so that two writers queue for the lock instead of failing halfway through with
"database is locked" when a read transaction tries to upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import DateTime, Engine, MetaData, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Constraint names are part of the schema: Alembic needs them to drop or alter a constraint on both
# databases, so they are generated from one convention instead of left to each backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_S = 30


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """A mapped class's table, typed as one (``__table__`` is typed as any FromClause)."""
    return cast(Table, model.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on PostgreSQL and on SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store naive UTC, and read it back as UTC below.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine for DATABASE_URL (already normalised by the settings)."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


#: The execution option of a connection that ``scan`` reads through.
_READ_ONLY = "libra_read_only"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how a transaction starts (pysqlite would otherwise
        # start deferred transactions on its own).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # IMMEDIATE takes the database's one write lock at once, so that a transaction that reads and
        # then writes waits for it here (busy_timeout) instead of failing at its first write. Scans
        # that only read (see ``scan``) begin deferred: in WAL mode a reader never blocks the writer.
        deferred = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for work that only reads, such as a request's credentials or a status poll.

    On PostgreSQL their connections are in autocommit: every statement is a transaction of its own,
    which saves a round trip for BEGIN and one for COMMIT (or the pool's ROLLBACK), and loses
    nothing, since under READ COMMITTED each statement of a transaction takes its own snapshot
    anyway. A write through one is committed as it executes, so only a write that stands alone in
    one statement belongs there. SQLite has no round trips to save: the ordinary sessions.
    """
    if engine.dialect.name != "postgresql":
        return make_sessionmaker(engine)
    return make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))


@contextmanager
def scan(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for a long read that writes nothing, such as garbage collection's look at every
    manifest. On SQLite its transaction does not take the write lock, which every other transaction
    begins with, for as long as it reads; writing through it may fail. Elsewhere an ordinary session.
    """
    with sessions() as session:
        session.connection(execution_options={_READ_ONLY: True})
        yield session


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends normally, roll back when it raises."""
    with sessions() as session, session.begin():
        yield session


#: Values per IN list: well under the bound-parameter limits of SQLite and PostgreSQL.
IN_LIST_LIMIT = 1000


def in_batches(values: Sequence[str]) -> Iterator[Sequence[str]]:
    """``values`` in slices short enough for one IN list each."""
    for start in range(0, len(values), IN_LIST_LIMIT):
        yield values[start : start + IN_LIST_LIMIT]


def insert_ignoring_duplicates(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> None:
    """INSERT rows, skipping those whose primary key exists already (ON CONFLICT DO NOTHING).

    Any number of rows: each is a parameter set of one statement (executemany), so no statement
    grows with them and no bound-parameter limit applies. Pending changes of the session are flushed
    first, as an ORM statement would, so that a row may reference an object added but not yet written.
    """
    if not rows:
        return
    session.flush()
    statement = _insert_ignoring(session.get_bind().dialect.name, table_of(model))
    session.execute(statement, rows)


@cache
def _insert_ignoring(dialect: str, table: Table) -> Any:
    # Built once per table: a statement of one row per parameter set (executemany, compiled once),
    # on the table rather than the mapped class, so it skips the ORM's bulk-insert machinery.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()
