"""Recovery: nothing is lost when a broker forgets a message or a worker dies.

The database is the truth. Two periodic jobs compare it with what should be happening:

* the *outbox relay* publishes what was committed but never reached the broker: deployments whose
  publish failed at POST time (``enqueued_at`` is NULL) and dead letters not yet published;
* the *reaper* finds deployments that stopped moving: queued ones never picked up (their message was
  lost, say by a Redis restart without persistence), running ones and waiters in the line for a
  sandbox slot whose heartbeat stopped (their worker died, their next ask was lost), and failed or
  cancelled ones whose cleanup never ran. It publishes them again from
  the first step that has not completed; a step whose worker died on every attempt is given up and
  dead-lettered instead.

Both only *claim* work here (in a transaction, so two reapers never take the same deployment); the
task layer publishes what was claimed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, not_, or_, select, update
from sqlalchemy.orm import Session

from libra_deploy import dead_letters, slots
from libra_deploy.config import Settings
from libra_deploy.db import utcnow
from libra_deploy.errors import WorkerLost
from libra_deploy.models import (
    ACTIVE_STATUSES,
    DeadLetter,
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    StepStatus,
)
from libra_deploy.retries import MAX_ATTEMPTS
from libra_deploy.steps.runner import fail_deployment, first_unfinished_step

#: Deployments a sweep handles at most, so one sweep stays short however much was lost.
BATCH = 200


@dataclass(frozen=True)
class Dispatch:
    """Publish the deployment's chain from ``start`` (the first step that has not completed)."""

    deployment_id: str
    start: str
    reason: str


@dataclass
class Claimed:
    dispatches: list[Dispatch] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def claim_outbox(session: Session, now: datetime) -> Claimed:
    """Queued deployments never published, and dead letters never published."""
    claimed = Claimed()
    rows = session.scalars(
        select(Deployment)
        .where(Deployment.status == DeploymentStatus.QUEUED, Deployment.enqueued_at.is_(None))
        .order_by(Deployment.created_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    for deployment in rows:
        deployment.enqueued_at = now
        claimed.dispatches.append(
            Dispatch(deployment.id, first_unfinished_step(session, deployment.id), "outbox")
        )
    claimed.dead_letters = list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.published_at.is_(None), DeadLetter.purged_at.is_(None))
            .limit(BATCH)
        )
    )
    return claimed


def claim_stalled(session: Session, settings: Settings, now: datetime) -> Claimed:
    """Deployments that stopped moving: lost messages, lost workers, cleanups that never ran."""
    claimed = Claimed()
    pickup = now - timedelta(seconds=settings.pickup_timeout_s)
    stale = now - timedelta(seconds=settings.heartbeat_timeout_s)
    not_recently_published = or_(Deployment.enqueued_at.is_(None), Deployment.enqueued_at < stale)
    # A deployment waiting in the line for a sandbox slot was picked up, even while it is still
    # queued (a replay that resumes at a step needing a slot): it is judged by its heartbeat, which
    # each of its asks refreshes, as a running one is, and not published again every PICKUP_TIMEOUT.
    in_line = slots.waiting()
    rows = session.scalars(
        select(Deployment)
        .where(
            or_(
                and_(
                    Deployment.status == DeploymentStatus.QUEUED,
                    Deployment.enqueued_at < pickup,
                    not_(in_line),
                ),
                and_(
                    or_(Deployment.status == DeploymentStatus.IN_PROGRESS, in_line),
                    or_(Deployment.heartbeat_at.is_(None), Deployment.heartbeat_at < stale),
                    not_recently_published,
                ),
                and_(
                    Deployment.status.in_([DeploymentStatus.FAILED, DeploymentStatus.CANCELLED]),
                    or_(Deployment.heartbeat_at.is_(None), Deployment.heartbeat_at < stale),
                    not_recently_published,
                    Deployment.steps.any(
                        and_(DeploymentStep.step == "cleanup", DeploymentStep.status != StepStatus.COMPLETED)
                    ),
                ),
            )
        )
        .order_by(Deployment.created_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    for deployment in rows:
        deployment.enqueued_at = now
        if deployment.status == DeploymentStatus.QUEUED and not slots.is_waiting(deployment):
            start = first_unfinished_step(session, deployment.id)
            claimed.dispatches.append(Dispatch(deployment.id, start, "not picked up"))
        elif deployment.status in ACTIVE_STATUSES:
            start = first_unfinished_step(session, deployment.id)
            row = next(r for r in deployment.steps if r.step == start)
            if row.status == StepStatus.IN_PROGRESS and row.attempts >= MAX_ATTEMPTS:
                claimed.dead_letters.append(_give_up(session, deployment, row))
                claimed.dispatches.append(Dispatch(deployment.id, "cleanup", "worker lost too often"))
            else:
                claimed.dispatches.append(Dispatch(deployment.id, start, "heartbeat stopped"))
        else:
            claimed.dispatches.append(Dispatch(deployment.id, "cleanup", "cleanup never ran"))
    return claimed


def _give_up(session: Session, deployment: Deployment, row: DeploymentStep) -> DeadLetter:
    error = WorkerLost(f"the worker running {row.step} was lost on each of its {row.attempts} attempts")
    row.status = StepStatus.FAILED
    row.error = error.message
    row.finished_at = utcnow()
    fail_deployment(session, deployment, row.step, error)
    return dead_letters.record(session, deployment, row, error)


def mark_unpublished(session: Session, deployment_ids: list[str]) -> None:
    """The broker refused these: leave them for the next relay."""
    if deployment_ids:
        session.execute(
            update(Deployment)
            .where(Deployment.id.in_(deployment_ids), Deployment.status == DeploymentStatus.QUEUED)
            .values(enqueued_at=None)
        )
