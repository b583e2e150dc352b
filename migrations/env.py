"""Alembic environment: the models' metadata, the URL from the settings, SQLite in batch mode."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, pool

import libra_deploy.models  # noqa: F401 - registers every table on the metadata
from libra_deploy.config import Settings
from libra_deploy.db import Base, UTCDateTime, make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Revisions spell our UTC timestamp type as the plain column type it stores.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=render_item,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table by copying it and dropping the original. With foreign keys
            # enforced, that DROP first deletes every row that references the table (ON DELETE
            # CASCADE): rebuilding projects would take every deployment with it. SQLite changes
            # the setting only outside a transaction, hence on the driver's connection, before
            # SQLAlchemy begins one; the references are checked below instead, before the commit.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        # SQLite's DDL is transactional; Alembic assumes it is not unless told, and would commit a
        # run whose check below failed.
        _configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                _check_references(connection)
    engine.dispose()


def _check_references(connection: Connection) -> None:
    """Refuse, rolling back every revision of this run, when a row references one that is missing."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        table, rowid, parent, _ = broken[0]
        raise RuntimeError(
            f"{len(broken)} rows would reference missing rows after the migration (first: {table} "
            f"row {rowid} -> {parent}); nothing was migrated"
        )


if context.is_offline_mode():
    run_offline()
else:
    run_online()
