"""Dead letters: the record of every deployment step that failed for good after its retries, and
of its replays.

The database row is the index operators list and replay from; the JSON envelope built here is what
goes to the dead-letter exchange (``deployment-dlx`` -> ``deployment-dlq``) for anything else that
consumes it. Replaying resets the deployment to resume at the failed step (or from the start), so
the step runner redoes what is needed and skips what is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from libra_deploy import quota
from libra_deploy.config import Settings
from libra_deploy.db import utcnow
from libra_deploy.errors import Conflict, NotFound, StepError
from libra_deploy.models import (
    DeadLetter,
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    Project,
    ProjectStatus,
    StepStatus,
)
from libra_deploy.redact import redact_text
from libra_deploy.steps import STEPS


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def record(session: Session, deployment: Deployment, row: DeploymentStep, error: StepError) -> DeadLetter:
    """Record the dead letter of a step that failed for good; the caller publishes its envelope."""
    now = utcnow()
    letter = DeadLetter(
        deployment_id=deployment.id,
        step=row.step,
        task_name=f"deploy.{row.step}",
        error_type=type(error).__name__,
        error_message=redact_text(error.message),
        attempts=row.attempts,
        created_at=now,
        message={},
    )
    session.add(letter)
    session.flush()
    letter.message = {
        "id": letter.id,
        "deploymentId": deployment.id,
        "projectId": deployment.project_id,
        "orgId": deployment.org_id,
        "step": row.step,
        "task": letter.task_name,
        "args": [deployment.id],
        "error": {
            "type": letter.error_type,
            "code": error.code,
            "message": letter.error_message,
            "retryable": error.retryable,
        },
        "attempts": row.attempts,
        "firstAttemptAt": _iso(row.started_at),
        "failedAt": _iso(now),
    }
    return letter


def ingest(session: Session, envelope: dict[str, Any]) -> DeadLetter:
    """Record a message the broker dead-lettered on its own (it has no row yet), to replay it."""
    existing = session.get(DeadLetter, envelope["id"])
    if existing is not None:
        return existing
    if not envelope.get("deploymentId") or envelope.get("step") not in STEPS:
        raise NotFound(
            f"dead letter {envelope['id']} names no deployment step", code="DEAD_LETTER_UNREADABLE"
        )
    error = envelope.get("error") or {}
    letter = DeadLetter(
        id=envelope["id"],
        deployment_id=envelope["deploymentId"],
        step=envelope["step"],
        task_name=envelope.get("task") or f"deploy.{envelope['step']}",
        message=envelope,
        error_type=str(error.get("type", "DeadLetteredByBroker")),
        error_message=str(error.get("message", "")),
        attempts=int(envelope.get("attempts") or 0),
        published_at=utcnow(),
    )
    session.add(letter)
    session.flush()
    return letter


def mark_published(session: Session, letter_id: str) -> None:
    session.execute(update(DeadLetter).where(DeadLetter.id == letter_id).values(published_at=utcnow()))


def pending(session: Session) -> list[DeadLetter]:
    """Dead letters neither replayed nor purged, oldest first."""
    return list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.replayed_at.is_(None), DeadLetter.purged_at.is_(None))
            .order_by(DeadLetter.created_at)
        )
    )


def get(session: Session, letter_id: str) -> DeadLetter:
    letter = session.get(DeadLetter, letter_id)
    if letter is None:
        raise NotFound(f"dead letter {letter_id} does not exist", code="DEAD_LETTER_NOT_FOUND")
    return letter


@dataclass(frozen=True)
class Replay:
    deployment_id: str
    start: str
    #: The dead letters the replay closed: the one replayed and any other open one of its deployment.
    closed: tuple[str, ...]


def prepare_replay(session: Session, settings: Settings, letter: DeadLetter, *, from_start: bool) -> Replay:
    """Put a failed deployment back in the queue, to resume at the failed step (or at validate),
    and close its dead letters.

    Refused (Conflict) unless the deployment failed and its cleanup has finished: a queued or running
    deployment is being replayed or resumed already, and a second chain would run its steps twice at
    once; a failure's cleanup still to run would complete the replayed deployment before it reached
    its failed step. Refused too when its project has another deployment queued or running
    (Conflict), or when its organisation has no quota left for it (TooManyRequests). The caller
    commits, then publishes; a publish that fails leaves the deployment to the outbox relay.
    """
    if letter.replayed_at is not None or letter.purged_at is not None:
        raise Conflict(f"dead letter {letter.id} was already replayed or purged", code="DEAD_LETTER_CLOSED")
    deployment_id, step = letter.deployment_id, letter.step
    deployment = session.get(Deployment, deployment_id, with_for_update=True)
    if deployment is None:
        raise NotFound(f"deployment {deployment_id} no longer exists", code="DEPLOYMENT_NOT_FOUND")
    if deployment.status == DeploymentStatus.COMPLETED:
        raise Conflict(
            f"deployment {deployment.id} is completed; there is nothing to replay",
            code="DEPLOYMENT_COMPLETED",
        )
    if deployment.status != DeploymentStatus.FAILED:
        # Queued or running, it is on its way again already (replayed through another of its dead
        # letters, published by the outbox relay or the reaper): resetting it would put the step it
        # runs back to pending, wipe the slot it holds, and start a second chain beside the first,
        # which runs that step twice at once. Cancelled, it was stopped on purpose.
        raise Conflict(
            f"deployment {deployment.id} is {deployment.status}; only a failed deployment can be replayed",
            code="DEPLOYMENT_NOT_FAILED",
        )
    cleanup = next(row for row in deployment.steps if row.step == "cleanup")
    if cleanup.status in (StepStatus.PENDING, StepStatus.IN_PROGRESS):
        # The failure's cleanup is on its way (published with the failure, or by the reaper): run on
        # the queued deployment, it would complete it at once, without its failed step.
        raise Conflict(
            f"deployment {deployment.id} is failed and its cleanup has not run yet; "
            "replay it once the cleanup has completed",
            code="DEPLOYMENT_CLEANUP_PENDING",
        )
    # Back in the queue first: the partial unique index on active deployments refuses it if the
    # project has another deployment queued or running.
    deployment.status = DeploymentStatus.QUEUED
    try:
        session.flush()
    except IntegrityError:
        # (The failed flush expired every loaded row: only plain values may be used from here.)
        raise Conflict(
            f"the project of {deployment_id} has another deployment queued or running",
            code="DEPLOYMENT_IN_PROGRESS",
        ) from None
    start = "validate" if from_start else step
    position = STEPS.index(start)
    for row in deployment.steps:
        if row.position >= position:
            row.status = StepStatus.PENDING
            row.attempts = 0
            row.error = None
            row.started_at = row.finished_at = None
            row.task_id = None
    deployment.current_step = None
    deployment.error_code = deployment.error_message = None
    deployment.finished_at = deployment.cancel_requested_at = None
    # A replay is a new run with a whole MAX_DEPLOYMENT_TIMEOUT of its own: the budget runs from
    # ``slot_acquired_at or started_at`` (runner._budget_s, the cutoff of steps.transitions), and
    # the first run's start may be long past. started_at is cleared rather than a replay time kept
    # beside it: the runner stamps it again when the replay's first step begins, as for any queued
    # deployment, so startedAt and finishedAt (cleared above) in the status API and the history
    # describe the run a client follows now, and their difference (cleanup's "completed in") is that
    # run's length, not the hours the deployment lay failed. The first run's times stay in its
    # completed steps, its log lines and its dead letter (firstAttemptAt, failedAt).
    deployment.started_at = None
    deployment.enqueued_at = None
    deployment.heartbeat_at = utcnow()
    # A replay takes a new sandbox slot when it reaches its sandbox, and records a new sandbox.
    deployment.slot_requested_at = deployment.slot_acquired_at = deployment.slot_released_at = None
    deployment.sandbox_created_at = deployment.sandbox_destroyed_at = None
    if from_start:
        deployment.progress = 0
    project = session.get(Project, deployment.project_id)
    if project is not None:
        project.deployment_status = ProjectStatus.PREPARING
    quota.readmit(session, settings, deployment)
    # Closed in the transaction that queues the deployment again, whatever the publish after it
    # does: an open letter means a failed deployment waiting for an operator, never a queued or
    # running one. Every open letter of the deployment closes, not only this one: each recorded a
    # failure this run supersedes (a broker's own copy of a message, say).
    closed = _close_letters(session, deployment_id, replayed=letter.id)
    return Replay(deployment_id, start, closed)


def _close_letters(session: Session, deployment_id: str, *, replayed: str) -> tuple[str, ...]:
    """Mark the deployment's open dead letters replayed; count a replay on ``replayed``."""
    rows = session.execute(
        update(DeadLetter)
        .where(
            DeadLetter.deployment_id == deployment_id,
            DeadLetter.replayed_at.is_(None),
            DeadLetter.purged_at.is_(None),
        )
        .values(
            replayed_at=utcnow(),
            replay_count=case(
                (DeadLetter.id == replayed, DeadLetter.replay_count + 1), else_=DeadLetter.replay_count
            ),
        )
        .returning(DeadLetter.id)
    )
    return tuple(rows.scalars())


def closed_among(session: Session, letter_ids: list[str]) -> set[str]:
    """Those of ``letter_ids`` recorded here as replayed or purged (a broker may still hold a copy)."""
    if not letter_ids:
        return set()
    return set(
        session.scalars(
            select(DeadLetter.id).where(
                DeadLetter.id.in_(letter_ids),
                or_(DeadLetter.replayed_at.is_not(None), DeadLetter.purged_at.is_not(None)),
            )
        )
    )


def mark_purged(session: Session, letter_ids: list[str]) -> None:
    if letter_ids:
        session.execute(update(DeadLetter).where(DeadLetter.id.in_(letter_ids)).values(purged_at=utcnow()))
