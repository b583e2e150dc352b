"""A deployment's log lines, read from the database by line id: a page, or a live tail.

Every reader (the JSON page, the Server-Sent Events stream, any number of web processes) reads the
same table with the (deployment_id, id) index, so a stream works whichever process serves it and
``Last-Event-ID`` (the last line id a client saw) resumes it exactly.

Line ids come from a sequence, and on PostgreSQL two transactions may commit in the opposite order
of the ids they took: a reader that saw line 12 could miss line 10 committed a moment later. The live
tail therefore hands out a line only once it has been visible for one poll: whatever took a smaller
id has committed by then (log transactions last milliseconds), and the stream stays in id order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from libra_deploy.db import utcnow
from libra_deploy.models import FINISHED_STATUSES, Deployment, DeploymentLog, DeploymentStep, StepStatus

MAX_PAGE = 1000
#: A finished deployment whose cleanup never ran (its worker is gone) ends the stream after this.
END_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class LogLine:
    id: int
    step: str | None
    level: str
    message: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "step": self.step,
            "level": self.level,
            "message": self.message,
            "timestamp": self.created_at.isoformat().replace("+00:00", "Z"),
        }


def lines_after(session: Session, deployment_id: str, after: int, limit: int = MAX_PAGE) -> list[LogLine]:
    """The deployment's lines with an id above ``after``, oldest first."""
    rows = session.execute(
        select(
            DeploymentLog.id,
            DeploymentLog.step,
            DeploymentLog.level,
            DeploymentLog.message,
            DeploymentLog.created_at,
        )
        .where(DeploymentLog.deployment_id == deployment_id, DeploymentLog.id > after)
        .order_by(DeploymentLog.id)
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    return [LogLine(*row) for row in rows]


@dataclass(frozen=True)
class Progress:
    """What a stream reports about the deployment besides its lines."""

    status: str
    current_step: str | None
    progress: int
    steps: dict[str, str]
    #: True once nothing will write lines any more (cleanup is over, or will never run).
    ended: bool
    url: str | None
    error_code: str | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "currentStep": self.current_step,
            "progress": self.progress,
            "steps": self.steps,
        }
        if self.url:
            body["url"] = self.url
        if self.error_code:
            body["errorCode"] = self.error_code
            body["error"] = self.error
        return body


def progress(session: Session, deployment_id: str) -> Progress | None:
    """The deployment's status and steps, in two indexed reads; None when it no longer exists."""
    row = session.execute(
        select(
            Deployment.status,
            Deployment.current_step,
            Deployment.progress,
            Deployment.finished_at,
            Deployment.url,
            Deployment.error_code,
            Deployment.error_message,
        ).where(Deployment.id == deployment_id)
    ).first()
    if row is None:
        return None
    status, current_step, percent, finished_at, url, error_code, error = row
    steps = dict(
        session.execute(
            select(DeploymentStep.step, DeploymentStep.status)
            .where(DeploymentStep.deployment_id == deployment_id)
            .order_by(DeploymentStep.position)
        ).all()
    )
    cleanup_over = steps.get("cleanup") in (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED)
    stale = finished_at is not None and utcnow() - finished_at > END_GRACE
    ended = status in FINISHED_STATUSES and (cleanup_over or stale)
    return Progress(status, current_step, percent, steps, ended, url, error_code, error)


class LogTail:
    """Follows one deployment's lines in id order, each handed out once (see the module's note)."""

    def __init__(self, deployment_id: str, after: int = 0) -> None:
        self.deployment_id = deployment_id
        self.cursor = after
        self._seen_up_to: int | None = None

    def poll(self, session: Session, *, final: bool = False) -> list[LogLine]:
        """New lines that were already visible at the previous poll (all of them when ``final``)."""
        rows = lines_after(session, self.deployment_id, self.cursor)
        if final:
            ready = rows
        else:
            limit = self._seen_up_to if self._seen_up_to is not None else self.cursor
            ready = [line for line in rows if line.id <= limit]
        if rows:
            self._seen_up_to = max(self._seen_up_to or 0, rows[-1].id)
        if ready:
            self.cursor = ready[-1].id
        return ready
