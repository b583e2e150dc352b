"""Runs one step of one deployment and records it: the one place that commits a step's state.

A step runs in three short transactions around work that holds none:

1. *begin* checks the recorded state first and decides whether the step runs at all:
   a step that completed is not run again (a redelivery), a finished deployment runs nothing but
   its cleanup, a step that another live worker is running is left to it (a duplicate message),
   a step that needs a sandbox slot waits for one, and a step whose worker died too often is
   given up. Only then is the step marked in_progress, with its attempt counted;
2. *execute* does the step's own work, watched by the process's :class:`StepMonitor` (heartbeats,
   cancellation) and bounded by the step's deadline; the deploy step commits one more short
   transaction before it switches the live site (:meth:`StepContext.begin_live_switch`: a cancel
   and the switch are decided under the deployment's row lock);
3. *record* writes the step's results, marks it completed, and moves the progress on; a cleanup
   that gave a sandbox slot back names the waiters whose turn has come, for the task layer to wake
   once this transaction has committed.

Two messages may carry the same step under different task ids: a waiter's pending retry and the
message that wakes it when a slot is handed over, or a chain the reaper published again. Exactly
one of them runs the step, and only that one goes on with the chain: the other finds the step in
progress (DUPLICATE) or completed (DONE_BY_ANOTHER) under another task id, and stops. A broker's
redelivery of the message that completed the step has that step's task id: it goes on
(ALREADY_DONE), since its worker may have died before it published the next step.

A copy with the running step's own task id is dropped too while the step's heartbeat is fresh
(DUPLICATE): the chain a redelivery goes on with carries the ids it was first published with, and
a retry's message and the redelivered original share one, so the same id is no proof that the
worker running the step is gone. When it is gone, its heartbeat stops, and the reaper publishes
the step again once it is stale; a copy that comes after that runs it.

On PostgreSQL, *begin* in its common case (a first attempt that runs; for the sandbox step, one
that finds a slot free at once, counted after the slots' lock) is one statement, and
*record* marks the step completed in one statement before the step's own writes
(:mod:`libra_deploy.steps.transitions`). When that first statement finds anything but the common
case, it changes nothing and *begin* decides by the full rule above.

:func:`fail_attempt` records a failed attempt and decides, from the attempts recorded in the
database (so crashes count as well as errors), whether the step is tried again.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import ModuleType
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.interfaces import LoaderOption

from libra_deploy import dead_letters, quota, slots, webhooks
from libra_deploy.config import Settings
from libra_deploy.db import transaction, utcnow
from libra_deploy.errors import DeploymentTimeout, LibraError, StepError, WorkerLost
from libra_deploy.models import (
    FINISHED_STATUSES,
    DeadLetter,
    Deployment,
    DeploymentLog,
    DeploymentStatus,
    DeploymentStep,
    Project,
    ProjectStatus,
    StepStatus,
)
from libra_deploy.redact import redact_text
from libra_deploy.retries import MAX_ATTEMPTS
from libra_deploy.runtime import Runtime
from libra_deploy.steps import (
    BUDGET,
    BULKY,
    PROGRESS,
    PROJECT_STATUS,
    SLOT_STEPS,
    STEPS,
    TITLES,
    UNREAD,
    transitions,
)
from libra_deploy.steps.monitor import StepMonitor, Watch

#: Log lines are written at least this often while a step streams output.
LOG_FLUSH_INTERVAL_S = 0.5
MAX_LOG_LINE = 4000


#: What begin leaves out of its snapshots, per step: the bulky columns the step does not read.
_BEGIN_DEFERRED = {step: tuple(defer(column) for column in UNREAD[step]) for step in STEPS}
#: What the record transaction leaves out: every bulky column (read only if a record reads one).
_RECORD_DEFERRED = tuple(defer(column) for column in BULKY)


class Outcome(StrEnum):
    RAN = "ran"
    #: This message had completed the step before (a redelivery): nothing was done, the chain goes on.
    ALREADY_DONE = "already_done"
    #: Another message completed the step, and its worker went on with the chain: this copy stops.
    DONE_BY_ANOTHER = "done_by_another"
    #: The deployment is finished (failed, cancelled) or gone: the step did not run.
    NOT_RUNNABLE = "not_runnable"
    #: A worker is running this step right now (its heartbeat is fresh): this message is a copy,
    #: whatever its task id.
    DUPLICATE = "duplicate"
    #: No sandbox slot is free: ask again later, without counting an attempt.
    WAITING = "waiting"
    #: The deployment was cancelled while the step ran; the step's work was stopped.
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class StepRun:
    """What :func:`run_step` did, and what the task layer publishes or schedules for it."""

    outcome: Outcome
    #: WAITING: seconds before asking again.
    wait_s: float = 0.0
    #: Deployments whose turn for a sandbox slot came when this step (a cleanup) gave one back:
    #: their sandbox step is published once this step has committed.
    woken: tuple[str, ...] = ()


def _module(step: str) -> ModuleType:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    return importlib.import_module(f"libra_deploy.steps.{step}")


def _line(deployment_id: str, step: str, message: str, level: str = "info") -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "step": step,
        "level": level,
        "message": redact_text(message)[:MAX_LOG_LINE],
        "created_at": utcnow(),
    }


def write_lines(session: Session, lines: list[dict[str, Any]]) -> None:
    if lines:
        session.execute(insert(DeploymentLog), lines)


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
        """Write pending lines now."""
        write_alone(self._runtime, self.take())


@dataclass
class StepContext:
    """What a step's ``execute`` gets: the runtime and read-only snapshots of its deployment."""

    runtime: Runtime
    step: str
    #: Detached snapshots taken when the step began, with only the bulky columns the step reads
    #: (steps.READS); ``record`` gets live rows to change.
    deployment: Deployment
    project: Project
    deadline: float
    logs: LogBuffer
    watch: Watch

    def log(self, message: str, level: str = "info") -> None:
        self.logs.add(message, level)

    def remaining_s(self) -> float:
        """Seconds left before the step's deadline; past it, the step fails with DEPLOYMENT_TIMEOUT."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeploymentTimeout(f"the {self.step} step ran out of time")
        return left

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` to stop the step's work if the deployment is cancelled while it runs."""
        self.watch.on_cancel(callback)

    @property
    def cancelled(self) -> bool:
        return self.watch.cancelled.is_set()

    def begin_live_switch(self, claim: Callable[[Session], None] | None = None) -> None:
        """Take the right to switch the project's live site to this deployment, or stop: cancelled.

        A cancel and the switch are decided under the deployment's row lock, which ``cancel``
        takes too (on SQLite, the write lock of BEGIN IMMEDIATE): a deployment cancelled first
        stops here, with nothing live changed (the step ends CANCELLED); otherwise
        ``live_switch_at`` is committed, and from then on a cancel is refused, so that the switch
        and the deployment complete. A retry of the step after the switch began finds its own mark
        and goes on (the first time stays). Called by the deploy step right before it activates.
        ``claim`` runs in the same transaction, for what must be taken before the switch or not
        at all (the custom domain): an error it raises leaves nothing marked or taken.
        """
        deployment_id = self.deployment.id
        # The UPDATE takes the row lock a cancel takes (and waits for one, then looks at the status
        # again): one statement, on PostgreSQL in autocommit unless ``claim`` has work to do with it.
        mark = (
            update(Deployment)
            .where(Deployment.id == deployment_id, Deployment.status == DeploymentStatus.IN_PROGRESS)
            .values(live_switch_at=func.coalesce(Deployment.live_switch_at, utcnow()))
            .returning(Deployment.id)
            .execution_options(synchronize_session=False)
        )
        sessions = self.runtime.read_sessions if claim is None else self.runtime.sessions
        with transaction(sessions) as session:
            if session.execute(mark).first() is not None:
                if claim is not None:
                    claim(session)
                return
            status = session.scalar(select(Deployment.status).where(Deployment.id == deployment_id))
        if status == DeploymentStatus.CANCELLED:
            # Seen here before the step monitor's next look: run_step records the step cancelled.
            self.watch.cancelled.set()
            raise StepError(
                "the deployment was cancelled before its live site was switched", code="CANCELLED"
            )
        raise StepError(f"deployment {deployment_id} is {status or 'gone'}; its live site is left as it is")


def monitor(runtime: Runtime) -> StepMonitor:
    """The process's step monitor for this runtime, started on first use."""
    found: StepMonitor | None = getattr(runtime, "_step_monitor", None)
    if found is None:
        found = StepMonitor(runtime.sessions, runtime.settings.heartbeat_interval_s)
        runtime._step_monitor = found  # type: ignore[attr-defined]
    return found


def run_step(runtime: Runtime, step: str, deployment_id: str, task_id: str | None = None) -> StepRun:
    """Run ``step`` of the deployment unless the recorded state says it must not run now."""
    module = _module(step)
    logs = LogBuffer(runtime, deployment_id, step)
    begun: StepRun | tuple[Deployment, Project, float] | None = _begin_at_once(
        runtime, step, deployment_id, task_id
    )
    if begun is None:
        with transaction(runtime.sessions) as session:
            begun = _begin(session, runtime, step, deployment_id, task_id)
    if isinstance(begun, StepRun):
        return begun
    deployment, project, budget_s = begun
    watcher = monitor(runtime)
    watch = watcher.watch(deployment_id, logs.flush)
    ctx = StepContext(runtime, step, deployment, project, time.monotonic() + budget_s, logs, watch)
    try:
        result = module.execute(ctx)
    except Exception:
        watcher.unwatch(watch)
        # Whatever happens, lines already produced (a build's output) are kept.
        write_alone(runtime, logs.take())
        if watch.cancelled.is_set():
            _record_cancelled(runtime, step, deployment_id, logs)
            return StepRun(Outcome.CANCELLED)
        raise
    watcher.unwatch(watch)
    # The step's pending lines are written in the transaction that completes it (one commit
    # instead of two); should that transaction fail, they are written on their own.
    pending = logs.take()
    try:
        with transaction(runtime.sessions) as session:
            woken = _complete(session, runtime, module, step, deployment_id, result, pending)
    except Exception:
        write_alone(runtime, pending)
        raise
    if watch.cancelled.is_set() and step != "cleanup":
        return StepRun(Outcome.CANCELLED)
    return StepRun(Outcome.RAN, woken=tuple(woken))


def write_alone(runtime: Runtime, lines: list[dict[str, Any]]) -> None:
    """Write log lines outside the step's transactions.

    A line stands alone (a batch need not be written all or nothing), so on PostgreSQL they go
    through an autocommit session: their INSERT is its own transaction, without a round trip for
    BEGIN and one for COMMIT.
    """
    if lines:
        with transaction(runtime.read_sessions) as session:
            write_lines(session, lines)


def _load(
    session: Session, deployment_id: str, step: str, deferred: tuple[LoaderOption, ...]
) -> tuple[Deployment, DeploymentStep, Project] | None:
    """The deployment and the step's row (locked until the transaction ends), and its project,
    without the ``deferred`` columns.

    One round trip instead of three: each costs as much as a no-op task's share of a chain. The
    step's row is locked too, not only the deployment: a transaction that waited for the lock then
    reads the row as the holder committed it, where PostgreSQL would give it the row of a table it
    did not lock as it was before the wait (two copies of a message would both find it pending).
    """
    found = session.execute(
        select(Deployment, DeploymentStep, Project)
        .join(
            DeploymentStep,
            and_(DeploymentStep.deployment_id == Deployment.id, DeploymentStep.step == step),
        )
        .join(Project, Project.id == Deployment.project_id)
        .where(Deployment.id == deployment_id)
        .options(*deferred)
        .with_for_update(of=(Deployment, DeploymentStep))
    ).one_or_none()
    return None if found is None else (found[0], found[1], found[2])


def _at_once(runtime: Runtime) -> bool:
    """Whether the transitions run as single statements (steps.transitions): on PostgreSQL."""
    return runtime.engine.dialect.name == "postgresql"


def _begin_at_once(
    runtime: Runtime, step: str, deployment_id: str, task_id: str | None
) -> tuple[Deployment, Project, float] | None:
    """Begin the step in one statement if it is the common case; None leaves it to :func:`_begin`."""
    if not _at_once(runtime):
        return None
    now = utcnow()
    settings = runtime.settings
    args = (
        step,
        deployment_id,
        task_id,
        now,
        settings.deployment_timeout_s,
        f"{TITLES[step]}...",
        settings.max_concurrent_deployments,
    )
    if step == transitions.ASKS_FOR_SLOT:
        # Its count of the held slots must see every grant before it: after the lock, in a transaction.
        with transaction(runtime.sessions) as session:
            slots.serialise(session)
            loaded = transitions.begin(session, *args)
    else:
        with runtime.read_sessions() as session:
            loaded = transitions.begin(session, *args)
    if loaded is None:
        return None
    deployment, project = loaded
    return deployment, project, _budget_s(settings, step, deployment, now)


def _budget_s(settings: Settings, step: str, deployment: Deployment, now: datetime) -> float:
    """The step's share of MAX_DEPLOYMENT_TIMEOUT, within what is left of the deployment's whole budget.

    The whole budget runs from the deployment's first step, or from when it got its sandbox slot:
    time spent queueing for a slot under load is not held against it.
    """
    budget_s = settings.deployment_timeout_s * BUDGET[step]
    if deployment.status in FINISHED_STATUSES:
        return budget_s
    origin = deployment.slot_acquired_at or deployment.started_at or now
    left = (origin - now).total_seconds() + settings.deployment_timeout_s
    if left <= 0:
        raise DeploymentTimeout(
            f"the deployment exceeded MAX_DEPLOYMENT_TIMEOUT ({settings.max_deployment_timeout_ms} ms)"
        )
    return min(budget_s, left)


def _begin(
    session: Session, runtime: Runtime, step: str, deployment_id: str, task_id: str | None
) -> StepRun | tuple[Deployment, Project, float]:
    settings = runtime.settings
    loaded = _load(session, deployment_id, step, _BEGIN_DEFERRED[step])
    if loaded is None:
        return StepRun(Outcome.NOT_RUNNABLE)
    deployment, row, project = loaded
    if row.status == StepStatus.COMPLETED:
        return StepRun(Outcome.ALREADY_DONE if row.task_id == task_id else Outcome.DONE_BY_ANOTHER)
    finished = deployment.status in FINISHED_STATUSES
    if finished and step != "cleanup":
        return StepRun(Outcome.NOT_RUNNABLE)
    now = utcnow()
    fresh = deployment.heartbeat_at is not None and now - deployment.heartbeat_at < timedelta(
        seconds=settings.heartbeat_timeout_s
    )
    if row.status == StepStatus.IN_PROGRESS and fresh:
        return StepRun(Outcome.DUPLICATE)
    if (
        step == "cleanup"
        and finished
        and fresh
        and any(other.status == StepStatus.IN_PROGRESS and other.step != step for other in deployment.steps)
    ):
        # Cancelled while a step runs: that step's worker stops it within a second or two; cleanup
        # comes after it, so that the deployment's record ends in order. (A running deployment's
        # cleanup comes after its deploy step: no step to wait for, and no step rows to load.)
        return StepRun(Outcome.WAITING, wait_s=settings.slot_wait_s)
    if row.status == StepStatus.IN_PROGRESS and row.attempts >= MAX_ATTEMPTS:
        # Every attempt so far ended with its worker gone: this message kills workers.
        raise WorkerLost(f"the worker running {step} was lost {row.attempts} times")
    ahead: int | None = None
    if step in SLOT_STEPS and not finished:
        ahead = slots.try_acquire(session, deployment, settings.max_concurrent_deployments, now)
    if ahead is not None:
        deployment.heartbeat_at = now
        if deployment.current_step != step:
            deployment.current_step = step
            write_lines(session, [_line(deployment_id, step, "Waiting for a free sandbox slot")])
        return StepRun(Outcome.WAITING, wait_s=slots.wait_s(settings, ahead))
    budget_s = _budget_s(settings, step, deployment, now)
    row.status = StepStatus.IN_PROGRESS
    row.attempts += 1
    row.task_id = task_id
    row.started_at = row.started_at or now
    if not finished:
        if deployment.status == DeploymentStatus.QUEUED:
            deployment.status = DeploymentStatus.IN_PROGRESS
            deployment.started_at = deployment.started_at or now
        deployment.current_step = step
        project.deployment_status = PROJECT_STATUS[step]
    deployment.heartbeat_at = now
    attempt = f" (attempt {row.attempts})" if row.attempts > 1 else ""
    write_lines(session, [_line(deployment_id, step, f"{TITLES[step]}...{attempt}")])
    session.flush()
    return deployment, project, budget_s


def _complete(
    session: Session,
    runtime: Runtime,
    module: ModuleType,
    step: str,
    deployment_id: str,
    result: Any,
    lines: list[dict[str, Any]],
) -> list[str]:
    """Record the step's results; return the waiters to wake for the slot a cleanup gave back."""
    now = utcnow()
    if _at_once(runtime):
        completed = transitions.complete(session, step, deployment_id, now, lines)
    else:
        completed = _complete_by_rows(session, step, deployment_id, now, lines)
    if completed is None:
        return []
    deployment, project = completed
    record: Callable[..., None] = module.record
    # What a step's record reads (the quota ledger, the project's webhooks) does not depend on the
    # rows it changes: without autoflush before each such query, the deployment's changes are
    # written in one UPDATE, not in one per query.
    with session.no_autoflush:
        record(session, deployment, project, result)
    if step == "cleanup" and deployment.slot_requested_at is not None:
        # Whether it held its slot or was still waiting for one (cancelled in the line), the line
        # moves on: whoever is first in it now is woken, rather than left to its next ask.
        return slots.turn_come(session, runtime.settings.max_concurrent_deployments)
    return []


def _complete_by_rows(
    session: Session, step: str, deployment_id: str, now: datetime, lines: list[dict[str, Any]]
) -> tuple[Deployment, Project] | None:
    """What :func:`transitions.complete` does in one statement, through the ORM (on SQLite)."""
    loaded = _load(session, deployment_id, step, _RECORD_DEFERRED)
    if loaded is None:
        return None
    deployment, row, project = loaded
    row.status = StepStatus.COMPLETED
    row.finished_at = now
    row.error = None
    if deployment.status not in FINISHED_STATUSES:
        deployment.progress = PROGRESS[step]
    deployment.heartbeat_at = now
    write_lines(session, lines)
    return deployment, project


def _record_cancelled(runtime: Runtime, step: str, deployment_id: str, logs: LogBuffer) -> None:
    with transaction(runtime.sessions) as session:
        row = _step_row(session, deployment_id, step)
        row.status = StepStatus.FAILED
        row.finished_at = utcnow()
        row.error = "cancelled"
        write_lines(
            session,
            [*logs.take(), _line(deployment_id, step, f"{step} stopped: the deployment was cancelled")],
        )


@dataclass(frozen=True)
class Verdict:
    """What became of a failed attempt."""

    #: True when the step will not be tried again (the deployment failed, or was cancelled).
    final: bool
    attempts: int
    #: The dead letter to publish when the step failed for good after retryable errors.
    dead_letter: DeadLetter | None = None


def fail_attempt(runtime: Runtime, step: str, deployment_id: str, error: StepError) -> Verdict:
    """Record a failed attempt of ``step``; fail the deployment when no attempt is left.

    Permanent errors fail at once. Retryable ones are tried again until MAX_ATTEMPTS executions
    are recorded; then the deployment fails and a dead letter records it for replay.
    """
    with transaction(runtime.sessions) as session:
        deployment = session.get(Deployment, deployment_id, with_for_update=True)
        if deployment is None:
            return Verdict(final=True, attempts=0)
        row = _step_row(session, deployment_id, step)
        row.error = redact_text(error.message)
        if deployment.status == DeploymentStatus.CANCELLED:
            row.status = StepStatus.FAILED
            row.finished_at = utcnow()
            return Verdict(final=True, attempts=row.attempts)
        if error.retryable and row.attempts < MAX_ATTEMPTS:
            # Waiting for its retry: pending, not in progress, until a worker takes it again.
            row.status = StepStatus.PENDING
            message = f"{step} attempt {row.attempts} failed: {error.message}; trying again"
            write_lines(session, [_line(deployment_id, step, message, "warning")])
            return Verdict(final=False, attempts=row.attempts)
        row.status = StepStatus.FAILED
        row.finished_at = utcnow()
        if deployment.status in FINISHED_STATUSES:
            write_lines(session, [_line(deployment_id, step, f"{step} failed: {error.message}", "error")])
            return Verdict(final=True, attempts=row.attempts)
        fail_deployment(session, deployment, step, error)
        letter = dead_letters.record(session, deployment, row, error) if error.retryable else None
        return Verdict(final=True, attempts=row.attempts, dead_letter=letter)


def fail_deployment(session: Session, deployment: Deployment, step: str, error: LibraError) -> None:
    """Mark a running deployment failed at ``step``; the steps it will not reach are skipped."""
    message = redact_text(error.message)
    deployment.status = DeploymentStatus.FAILED
    quota.release(session, deployment.id)
    deployment.error_code = error.code
    deployment.error_message = f"{step} failed: {message}"
    deployment.finished_at = utcnow()
    project = session.get(Project, deployment.project_id)
    if project is not None:
        project.deployment_status = ProjectStatus.FAILED
    session.execute(
        update(DeploymentStep)
        .where(
            DeploymentStep.deployment_id == deployment.id,
            DeploymentStep.position > STEPS.index(step),
            DeploymentStep.step != "cleanup",
            DeploymentStep.status == StepStatus.PENDING,
        )
        .values(status=StepStatus.SKIPPED)
    )
    write_lines(session, [_line(deployment.id, step, f"{step} failed: {message}", "error")])
    webhooks.record_event(session, deployment, "deployment.failed")


def first_unfinished_step(session: Session, deployment_id: str) -> str:
    """Where a deployment resumes: its first step that has not completed."""
    done = set(
        session.scalars(
            select(DeploymentStep.step).where(
                DeploymentStep.deployment_id == deployment_id, DeploymentStep.status == StepStatus.COMPLETED
            )
        )
    )
    return next((step for step in STEPS if step not in done), "cleanup")


def _step_row(session: Session, deployment_id: str, step: str) -> DeploymentStep:
    return session.scalars(
        select(DeploymentStep).where(
            DeploymentStep.deployment_id == deployment_id, DeploymentStep.step == step
        )
    ).one()
