"""``Idempotency-Key`` on POST /deploy: a retried request never deploys twice.

The same key and the same body within :data:`KEY_LIFETIME` answer with the deployment the first
request created (same id, 202); the same key with another body is refused with 422, the only 422 of
the API. The key is scoped to the organisation.

Races are settled by the database: :func:`claim` INSERTs the key first, in the transaction that then
creates the deployment. Of ten concurrent requests with one key, one INSERT goes through; on
PostgreSQL the others wait on the primary key until that transaction ends (on SQLite, writers queue
for the database lock), then find its row and answer with its deployment. If the first request fails
(a 400, a 409), its transaction rolls back, the key goes with it, and a waiting request takes over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from libra_deploy.db import insert_ignoring_duplicates, utcnow
from libra_deploy.errors import InvalidInput, Unprocessable
from libra_deploy.models import Deployment, IdempotencyKey

KEY_LIFETIME = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def request_hash(body: Any) -> str:
    """SHA-256 of the body in canonical JSON: key order and whitespace do not make another body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters",
            code="INVALID_IDEMPOTENCY_KEY",
            details={"header": "Idempotency-Key"},
        )
    return key


@dataclass(frozen=True)
class Claim:
    key: str
    #: The deployment an earlier request with this key created; None when this request is the first.
    existing: Deployment | None


def claim(session: Session, org_id: str, key: str, body_hash: str) -> Claim:
    """Take the key for this request, or find the deployment an earlier request made with it.

    Raises :class:`Unprocessable` when the key was used with another body within its lifetime.
    """
    key = check_key(key)
    # An expired key is free again: a new request with it deploys anew.
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.org_id == org_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < utcnow() - KEY_LIFETIME,
        )
    )
    insert_ignoring_duplicates(
        session,
        IdempotencyKey,
        [{"org_id": org_id, "key": key, "request_hash": body_hash, "created_at": utcnow()}],
    )
    row = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.org_id == org_id, IdempotencyKey.key == key)
    ).one()
    if row.deployment_id is None:
        # Our own INSERT (a committed row always names its deployment).
        return Claim(key, None)
    if row.request_hash != body_hash:
        raise Unprocessable(
            "this Idempotency-Key was used with another request body in the last 24 hours; "
            "use a new key for a new request",
            details={"header": "Idempotency-Key", "deploymentId": row.deployment_id},
        )
    existing = session.get(Deployment, row.deployment_id)
    assert existing is not None  # the key row cascades with its deployment
    return Claim(key, existing)


def bind(session: Session, org_id: str, key: str, deployment: Deployment) -> None:
    """Record the deployment the claimed key created (same transaction as the claim)."""
    row = session.get(IdempotencyKey, (org_id, key))
    assert row is not None
    row.deployment_id = deployment.id
    session.flush()


def forget_expired(session: Session, now: datetime) -> int:
    """Delete the keys older than their lifetime (garbage collection); return how many went."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - KEY_LIFETIME))
    return int(getattr(result, "rowcount", 0) or 0)
