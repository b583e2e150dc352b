"""Request-scoped access to the runtime, the database session and the caller."""

from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session

from libra_deploy.auth import Principal
from libra_deploy.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["libra_deploy"]


def db() -> Session:
    """The request's session, opened on first use and closed (rolled back if uncommitted) at teardown."""
    if "db" not in g:
        g.db = runtime().sessions()
    return g.db


def read_db() -> Session:
    """The request's session for pure reads (autocommit on PostgreSQL: no BEGIN and COMMIT round
    trips), opened on first use and closed at teardown."""
    if "read_db" not in g:
        g.read_db = runtime().read_sessions()
    return g.read_db


def principal() -> Principal:
    """The authenticated caller; views behind authentication may rely on it being set."""
    return g.principal


def maybe_principal() -> Principal | None:
    """The caller, or None on a public endpoint called without credentials."""
    return g.get("principal")


def unresolved_token() -> str | None:
    """The request's Bearer token on an endpoint that resolves it itself (web.auth.RESOLVED_BY_VIEW),
    which must do so before it shows anything; None elsewhere."""
    return g.get("unresolved_token")


def close_db(_exc: BaseException | None = None) -> None:
    for name in ("db", "read_db"):
        session = g.pop(name, None)
        if session is not None:
            session.close()
