"""Sandbox slots: at most MAX_CONCURRENT_DEPLOYMENTS deployments hold a sandbox at once, across
every worker.

A deployment asks for a slot when it reaches its sandbox step and gives it back when cleanup has
destroyed the sandbox. The slot is a pair of timestamps on the deployment row, so it cannot be
leaked by a dying worker: the reaper resumes or fails that deployment, and its cleanup frees it.
Deployments that already hold a slot never wait; the others are served in the order they asked.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from libra_deploy.models import Deployment, DeploymentStatus

#: The transaction-scoped advisory lock that serialises slot grants on PostgreSQL (SQLite's
#: BEGIN IMMEDIATE already serialises every writer).
_ADVISORY_LOCK = 0x11B2A_510


def holds_slot(deployment: Deployment) -> bool:
    return deployment.slot_acquired_at is not None and deployment.slot_released_at is None


def try_acquire(session: Session, deployment: Deployment, capacity: int, now: datetime) -> bool:
    """Take a free slot for ``deployment`` if its turn has come; record that it asked either way."""
    if holds_slot(deployment):
        return True
    if deployment.slot_requested_at is None:
        deployment.slot_requested_at = now
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    held = session.scalar(
        select(func.count())
        .select_from(Deployment)
        .where(Deployment.slot_acquired_at.is_not(None), Deployment.slot_released_at.is_(None))
    )
    ahead = session.scalar(
        select(func.count())
        .select_from(Deployment)
        .where(
            Deployment.status == DeploymentStatus.IN_PROGRESS,
            Deployment.slot_acquired_at.is_(None),
            Deployment.slot_requested_at < deployment.slot_requested_at,
        )
    )
    if (held or 0) + (ahead or 0) >= capacity:
        return False
    deployment.slot_acquired_at = now
    return True


def release(deployment: Deployment, now: datetime) -> None:
    if holds_slot(deployment):
        deployment.slot_released_at = now
