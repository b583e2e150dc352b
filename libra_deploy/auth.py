"""Who is calling: API tokens, stored as SHA-256 only, resolved to an organisation and a user."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from libra_deploy.db import utcnow
from libra_deploy.errors import NotFound, Unauthorized
from libra_deploy.models import ApiToken, User

TOKEN_PREFIX = "ldt_"  # noqa: S105 - a prefix that marks tokens in leaked text, not a secret
# Recording every use would add a write to every request; a minute's precision is plenty.
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """The caller of a request: everything it may see belongs to ``org_id``."""

    org_id: str
    user_id: str
    token_id: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, org_id: str, user_id: str, name: str = "") -> tuple[ApiToken, str]:
    """Create a token for a user of the organisation; return the row and the token (shown once)."""
    user = session.get(User, user_id)
    if user is None or user.org_id != org_id:
        raise NotFound(f"user {user_id} is not a member of organisation {org_id}", code="USER_NOT_FOUND")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(org_id=org_id, user_id=user_id, token_hash=hash_token(token), name=name)
    session.add(row)
    session.flush()
    return row, token


def authenticate_token(session: Session, token: str) -> Principal:
    """Resolve a Bearer token, or raise Unauthorized (the same answer for unknown and revoked)."""
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("the API token is not valid", code="INVALID_TOKEN")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_PRECISION:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    return Principal(org_id=row.org_id, user_id=row.user_id, token_id=row.id)
