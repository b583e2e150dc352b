"""Who is calling: API tokens and cookie sessions, stored as SHA-256 only, resolved to a principal.

Tokens (``Authorization: Bearer ldt_...``) are for programs; sessions (the ``session`` cookie,
``lds_...``) are for browsers and expire. An unknown, revoked and expired credential all get the
same answer, so that an answer never tells which of them a guess was.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from libra_deploy.db import utcnow
from libra_deploy.errors import InvalidInput, NotFound, Unauthorized
from libra_deploy.models import ApiToken, User, UserSession

TOKEN_PREFIX = "ldt_"  # noqa: S105 - a prefix that marks tokens in leaked text, not a secret
SESSION_PREFIX = "lds_"
# Recording every use would add a write to every request; a minute's precision is plenty.
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """The caller of a request: everything it may see belongs to ``org_id``."""

    org_id: str
    user_id: str
    #: The id of the credential the request came with: an API token (tok_...) or a session (ses_...).
    token_id: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _member(session: Session, org_id: str, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None or user.org_id != org_id:
        raise NotFound(f"user {user_id} is not a member of organisation {org_id}", code="USER_NOT_FOUND")
    return user


def create_token(session: Session, *, org_id: str, user_id: str, name: str = "") -> tuple[ApiToken, str]:
    """Create a token for a user of the organisation; return the row and the token (shown once)."""
    _member(session, org_id, user_id)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(org_id=org_id, user_id=user_id, token_hash=hash_token(token), name=name)
    session.add(row)
    session.flush()
    return row, token


_tokens = ApiToken.__table__.c
#: What resolving a token reads of its row, in this order (:func:`principal_of_token` takes it).
TOKEN_COLUMNS = (_tokens.id, _tokens.org_id, _tokens.user_id, _tokens.revoked_at, _tokens.last_used_at)
#: Every API request runs it: the columns it needs, on the table (no ORM entity is built), built once.
_TOKEN_BY_HASH = select(*TOKEN_COLUMNS).where(_tokens.token_hash == bindparam("token_hash"))


def authenticate_token(session: Session, token: str) -> Principal:
    """Resolve a Bearer token, or raise Unauthorized (the same answer for unknown and revoked)."""
    row = session.execute(_TOKEN_BY_HASH, {"token_hash": hash_token(token)}).first()
    return principal_of_token(session, row)


def principal_of_token(session: Session, row: Sequence[Any] | None) -> Principal:
    """The caller named by a token's row (:data:`TOKEN_COLUMNS`, looked up by :func:`hash_token`), or
    Unauthorized when there is none or it is revoked. Stamps the token's last use when it is due.

    A statement that reads something else may read the row too (GET /deploy-status does, to answer a
    poll in one round trip); whatever it read must not be shown before this has returned."""
    if row is None:
        raise _invalid_token()
    token_id, org_id, user_id, revoked_at, last_used_at = row
    if revoked_at is not None:
        raise _invalid_token()
    now = utcnow()
    if last_used_at is None or now - last_used_at > LAST_USED_PRECISION:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
    return Principal(org_id=org_id, user_id=user_id, token_id=token_id)


def _invalid_token() -> Unauthorized:
    # One answer for an unknown and a revoked token, so that it never tells which a guess was.
    return Unauthorized("the API token is not valid", code="INVALID_TOKEN")


def revoke_token(session: Session, token: str) -> ApiToken:
    """Revoke an API token, named by its id (tok_...) or by the token itself. Revoking twice is harmless."""
    by_value = token.startswith(TOKEN_PREFIX)
    condition = ApiToken.token_hash == hash_token(token) if by_value else ApiToken.id == token
    row = session.scalars(select(ApiToken).where(condition)).first()
    if row is None:
        # Never echo a token given by value: it may be a real one mistyped.
        raise NotFound("no such API token" if by_value else f"no API token {token}", code="TOKEN_NOT_FOUND")
    row.revoked_at = row.revoked_at or utcnow()
    session.flush()
    return row


def create_session(session: Session, *, org_id: str, user_id: str, ttl: timedelta) -> tuple[UserSession, str]:
    """Open a session for a user of the organisation; return the row and the cookie value (shown once)."""
    if ttl <= timedelta(0):
        raise InvalidInput("a session's lifetime must be positive", details={"field": "ttl"})
    _member(session, org_id, user_id)
    value = SESSION_PREFIX + secrets.token_urlsafe(32)
    row = UserSession(
        org_id=org_id, user_id=user_id, session_hash=hash_token(value), expires_at=utcnow() + ttl
    )
    session.add(row)
    session.flush()
    return row, value


def authenticate_session(session: Session, value: str) -> Principal:
    """Resolve a ``session`` cookie, or raise Unauthorized (unknown, revoked and expired alike)."""
    row = session.scalars(select(UserSession).where(UserSession.session_hash == hash_token(value))).first()
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        raise Unauthorized("the session is not valid or has expired", code="INVALID_SESSION")
    return Principal(org_id=row.org_id, user_id=row.user_id, token_id=row.id)
