"""Runs one step of one deployment and records it: the one place that commits a step's state.

A step runs in three short transactions around work that holds none:

1. *begin*: check the recorded state first (a step that already completed is not run again, a
   finished deployment runs nothing but its cleanup), then mark the step in_progress;
2. *execute*: the step's own work, with log lines buffered and flushed as they come;
3. *record*: the step's results, the step completed, the progress, the remaining log lines.

A redelivered or replayed message therefore redoes nothing that is done. Failures are recorded by
:func:`record_failure`, called by the task layer once it knows whether the step will be retried.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from libra_deploy import quota
from libra_deploy.db import transaction, utcnow
from libra_deploy.errors import LibraError
from libra_deploy.models import (
    FINISHED_STATUSES,
    Deployment,
    DeploymentLog,
    DeploymentStatus,
    DeploymentStep,
    Project,
    ProjectStatus,
    StepStatus,
)
from libra_deploy.redact import redact_text
from libra_deploy.runtime import Runtime
from libra_deploy.steps import BUDGET, PROGRESS, PROJECT_STATUS, STEPS, TITLES

#: Log lines are written at least this often while a step streams output.
LOG_FLUSH_INTERVAL_S = 0.5
MAX_LOG_LINE = 4000


class Outcome(StrEnum):
    RAN = "ran"
    #: The step had completed before (a redelivery): nothing was done, the chain goes on.
    ALREADY_DONE = "already_done"
    #: The deployment is finished (failed, cancelled) or gone: the step did not run.
    NOT_RUNNABLE = "not_runnable"


def _module(step: str) -> ModuleType:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    return importlib.import_module(f"libra_deploy.steps.{step}")


class LogBuffer:
    """Collects a step's log lines from any thread and writes them in batches."""

    def __init__(self, runtime: Runtime, deployment_id: str, step: str) -> None:
        self._runtime = runtime
        self._deployment_id = deployment_id
        self._step = step
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def add(self, message: str, level: str = "info") -> None:
        line = _line(self._deployment_id, self._step, message, level)
        with self._lock:
            self._lines.append(line)
            due = time.monotonic() - self._last_flush >= LOG_FLUSH_INTERVAL_S
        if due:
            self.flush()

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            lines, self._lines = self._lines, []
            self._last_flush = time.monotonic()
        return lines

    def flush(self) -> None:
        """Write pending lines now, refreshing the deployment's heartbeat with them."""
        lines = self.take()
        if lines:
            with transaction(self._runtime.sessions) as session:
                write_lines(session, lines)
                session.execute(
                    update(Deployment)
                    .where(Deployment.id == self._deployment_id)
                    .values(heartbeat_at=utcnow())
                )


def write_lines(session: Session, lines: list[dict[str, Any]]) -> None:
    if lines:
        session.execute(insert(DeploymentLog), lines)


@dataclass
class StepContext:
    """What a step's ``execute`` gets: the runtime and read-only snapshots of its deployment."""

    runtime: Runtime
    step: str
    #: Detached snapshots taken when the step began; ``record`` gets live rows to change.
    deployment: Deployment
    project: Project
    deadline: float
    logs: LogBuffer
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str, level: str = "info") -> None:
        self.logs.add(message, level)

    def remaining_s(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


def run_step(runtime: Runtime, step: str, deployment_id: str) -> Outcome:
    """Run ``step`` of the deployment unless the recorded state says it must not run."""
    module = _module(step)
    logs = LogBuffer(runtime, deployment_id, step)
    with transaction(runtime.sessions) as session:
        begun = _begin(session, step, deployment_id, logs)
        if isinstance(begun, Outcome):
            return begun
        deployment, project = begun
    budget_s = runtime.settings.deployment_timeout_s * BUDGET[step]
    ctx = StepContext(runtime, step, deployment, project, time.monotonic() + budget_s, logs)
    try:
        result = module.execute(ctx)
    finally:
        # Whatever happens, lines already produced (a build's output) are kept.
        pending = logs.take()
        if pending:
            with transaction(runtime.sessions) as session:
                write_lines(session, pending)
    with transaction(runtime.sessions) as session:
        _complete(session, module, step, deployment_id, result, logs)
    return Outcome.RAN


def _begin(
    session: Session, step: str, deployment_id: str, logs: LogBuffer
) -> Outcome | tuple[Deployment, Project]:
    deployment = session.get(Deployment, deployment_id, with_for_update=True)
    if deployment is None:
        return Outcome.NOT_RUNNABLE
    row = _step_row(session, deployment_id, step)
    if row.status == StepStatus.COMPLETED:
        return Outcome.ALREADY_DONE
    finished = deployment.status in FINISHED_STATUSES
    if finished and step != "cleanup":
        return Outcome.NOT_RUNNABLE
    now = utcnow()
    row.status = StepStatus.IN_PROGRESS
    row.attempts += 1
    row.started_at = row.started_at or now
    project = session.get(Project, deployment.project_id)
    assert project is not None  # deployments cascade with their project
    if not finished:
        if deployment.status == DeploymentStatus.QUEUED:
            deployment.status = DeploymentStatus.IN_PROGRESS
            deployment.started_at = now
        deployment.current_step = step
        project.deployment_status = PROJECT_STATUS[step]
    deployment.heartbeat_at = now
    attempt = f" (attempt {row.attempts})" if row.attempts > 1 else ""
    write_lines(session, [_line(deployment_id, step, f"{TITLES[step]}...{attempt}")])
    session.flush()
    return deployment, project


def _complete(
    session: Session, module: ModuleType, step: str, deployment_id: str, result: Any, logs: LogBuffer
) -> None:
    deployment = session.get(Deployment, deployment_id, with_for_update=True)
    if deployment is None:
        return
    project = session.get(Project, deployment.project_id)
    assert project is not None
    was_running = deployment.status not in FINISHED_STATUSES
    record: Callable[..., None] = module.record
    record(session, deployment, project, result)
    row = _step_row(session, deployment_id, step)
    row.status = StepStatus.COMPLETED
    row.finished_at = utcnow()
    row.error = None
    if was_running:
        deployment.progress = PROGRESS[step]
    write_lines(session, logs.take())


def record_failure(
    runtime: Runtime, step: str, deployment_id: str, error: LibraError, *, final: bool
) -> None:
    """Record a failed attempt; when ``final``, fail the deployment (later steps but cleanup skipped)."""
    with transaction(runtime.sessions) as session:
        deployment = session.get(Deployment, deployment_id, with_for_update=True)
        if deployment is None:
            return
        row = _step_row(session, deployment_id, step)
        row.error = error.message
        now = utcnow()
        if not final:
            # Waiting for its retry: pending, not in progress, until a worker takes it again.
            row.status = StepStatus.PENDING
            write_lines(
                session,
                [
                    _line(
                        deployment_id,
                        step,
                        f"{step} attempt {row.attempts} failed: {error.message}",
                        "warning",
                    )
                ],
            )
            return
        row.status = StepStatus.FAILED
        row.finished_at = now
        write_lines(session, [_line(deployment_id, step, f"{step} failed: {error.message}", "error")])
        if deployment.status in FINISHED_STATUSES:
            return
        deployment.status = DeploymentStatus.FAILED
        quota.release(session, deployment_id)
        deployment.error_code = error.code
        deployment.error_message = f"{step} failed: {error.message}"
        project = session.get(Project, deployment.project_id)
        if project is not None:
            project.deployment_status = ProjectStatus.FAILED
        position = STEPS.index(step)
        session.execute(
            update(DeploymentStep)
            .where(
                DeploymentStep.deployment_id == deployment_id,
                DeploymentStep.position > position,
                DeploymentStep.step != "cleanup",
                DeploymentStep.status == StepStatus.PENDING,
            )
            .values(status=StepStatus.SKIPPED)
        )


def _step_row(session: Session, deployment_id: str, step: str) -> DeploymentStep:
    row = session.scalars(
        select(DeploymentStep).where(
            DeploymentStep.deployment_id == deployment_id, DeploymentStep.step == step
        )
    ).one()
    return row


def _line(deployment_id: str, step: str, message: str, level: str = "info") -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "step": step,
        "level": level,
        # The one place log lines are made: a build that prints a secret never gets it stored.
        "message": redact_text(message)[:MAX_LOG_LINE],
        "created_at": utcnow(),
    }
