"""A step's two transitions on PostgreSQL, each one statement: *begun* and *completed*.

Every step of every deployment makes both, so they are the bulk of what the pipeline adds to a bare
Celery chain. Written as an ORM unit of work (BEGIN, a locking SELECT of three entities, an UPDATE
per table, the log line's INSERT, COMMIT) each took 6 or 7 round trips and a few milliseconds of
the ORM's loading and flushing. Here each is one data-modifying CTE: it locks the deployment,
checks and changes the step's row, the deployment, the project and the log in one round trip, and
returns the deployment and its project for the ORM to load. The statements are built once per
step and bound by parameters (building one costs more than running it).

:func:`begin` takes the common case only: a step's first attempt on a deployment that is queued or
running, holds its sandbox slot if the step needs one (for the step that asks for the slot: asks
for the first time, and one is free at once), and has time left. Anything else (a retry, a
redelivery or a copy of a message, a wait for a slot, a finished deployment, a deployment out of
time) makes the statement change nothing and return no row, and the runner decides it by the full
rule (``runner._begin``), which is also what runs on SQLite, where a round trip costs nothing. It
runs in autocommit, one statement being its own transaction, so BEGIN and COMMIT cost no round trip
either; except the step that asks for a slot, whose statement runs in a transaction after the lock
that serialises slot grants (``slots.serialise``), so that its count of the held slots sees every
grant before it.

:func:`complete` runs inside the transaction that also holds the step's own ``record``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    String,
    Text,
    bindparam,
    case,
    column,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from libra_deploy import slots
from libra_deploy.db import UTCDateTime, table_of
from libra_deploy.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    Deployment,
    DeploymentLog,
    DeploymentStatus,
    DeploymentStep,
    Project,
    StepStatus,
)
from libra_deploy.steps import BULKY, PROGRESS, PROJECT_STATUS, SLOT_STEPS, STEPS, UNREAD

_deployments = table_of(Deployment)
_steps = table_of(DeploymentStep)
_projects = table_of(Project)
_logs = table_of(DeploymentLog)


def _returned(left_out: Sequence[Any]) -> tuple[list[Column[Any]], list[Column[Any]]]:
    """The deployment's and the project's columns to return: all but the bulky ones ``left_out``."""
    named = {(c.class_.__tablename__, c.key) for c in left_out}
    return (
        [c for c in _deployments.c if (_deployments.name, c.key) not in named],
        [c for c in _projects.c if (_projects.name, c.key) not in named],
    )


# Parameters are named apart from every column of the tables the statements change: an UPDATE
# would take a parameter named like one of its columns for that column's new value.
def _at(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime)


def _locked(*conditions: Any) -> Any:
    """The deployment's row, locked first, as every writer of a deployment's state locks it."""
    deployments = _deployments.c
    return (
        select(deployments.id)
        .where(deployments.id == bindparam("deployment"), *conditions)
        .with_for_update()
        .cte("locked")
    )


#: The step that asks for a sandbox slot (slots.py); build and deploy run while it is held.
ASKS_FOR_SLOT = next(step for step in STEPS if step in SLOT_STEPS)


def _begin_statement(step: str) -> Executable:
    deployments, steps, projects = _deployments.c, _steps.c, _projects.c
    origin = func.coalesce(deployments.slot_acquired_at, deployments.started_at)
    runnable = [
        deployments.status.in_(ACTIVE_STATUSES),
        # Time left, as runner._budget_s counts it (which raises when there is none).
        or_(origin.is_(None), origin > _at("cutoff")),
    ]
    slot: dict[str, Any] = {}
    if step == ASKS_FOR_SLOT:
        # Its first ask, granted at once; one that must wait is the full rule's (its place in line).
        runnable += [
            deployments.slot_requested_at.is_(None),
            deployments.slot_acquired_at.is_(None),
            slots.free_for_a_newcomer(bindparam("capacity", type_=Integer)),
        ]
        slot = {"slot_requested_at": _at("now"), "slot_acquired_at": _at("now")}
    elif step in SLOT_STEPS:
        runnable += [deployments.slot_acquired_at.is_not(None), deployments.slot_released_at.is_(None)]
    locked = _locked(*runnable)
    marked = (
        update(_steps)
        .where(
            steps.deployment_id == locked.c.id,
            steps.step == step,
            steps.status == StepStatus.PENDING,
            steps.attempts == 0,
        )
        .values(
            status=StepStatus.IN_PROGRESS,
            attempts=steps.attempts + 1,
            task_id=bindparam("task", type_=String),
            started_at=func.coalesce(steps.started_at, _at("now")),
        )
        .returning(steps.deployment_id)
        .cte("marked")
    )
    queued = deployments.status == DeploymentStatus.QUEUED
    deployment_columns, project_columns = _returned(UNREAD[step])
    moved = (
        update(_deployments)
        .where(deployments.id.in_(select(marked.c.deployment_id)))
        .values(
            status=case((queued, DeploymentStatus.IN_PROGRESS), else_=deployments.status),
            started_at=case(
                (queued, func.coalesce(deployments.started_at, _at("now"))), else_=deployments.started_at
            ),
            current_step=step,
            heartbeat_at=_at("now"),
            # Set here: SQLAlchemy applies no onupdate inside a CTE.
            updated_at=_at("now"),
            **slot,
        )
        .returning(*deployment_columns)
        .cte("moved")
    )
    status = PROJECT_STATUS[step]
    project = (
        update(_projects)
        .where(projects.id == moved.c.project_id)
        .values(
            deployment_status=status,
            updated_at=case((projects.deployment_status == status, projects.updated_at), else_=_at("now")),
        )
        .returning(*project_columns)
        .cte("project")
    )
    logged = (
        insert(_logs)
        .from_select(
            ["deployment_id", "step", "level", "message", "created_at"],
            select(
                marked.c.deployment_id,
                literal(step),
                literal("info"),
                bindparam("line", type_=Text),
                _at("now"),
            ),
        )
        .cte("logged")
    )
    returned = (
        select(*(moved.c[c.key] for c in deployment_columns), *(project.c[c.key] for c in project_columns))
        .select_from(moved.join(project, project.c.id == moved.c.project_id))
        .add_cte(logged)
    )
    return select(Deployment, Project).from_statement(returned)


def _complete_statement(step: str) -> Executable:
    deployments, steps, projects = _deployments.c, _steps.c, _projects.c
    done = (
        update(_steps)
        .where(steps.deployment_id == _locked().c.id, steps.step == step)
        .values(status=StepStatus.COMPLETED, finished_at=_at("now"), error=None)
        .returning(steps.deployment_id)
        .cte("done")
    )
    finished = deployments.status.in_(FINISHED_STATUSES)
    deployment_columns, project_columns = _returned(BULKY)
    moved = (
        update(_deployments)
        .where(deployments.id.in_(select(done.c.deployment_id)))
        .values(
            progress=case((finished, deployments.progress), else_=PROGRESS[step]),
            heartbeat_at=_at("now"),
            updated_at=_at("now"),
        )
        .returning(*deployment_columns)
        .cte("moved")
    )
    # The step's pending log lines, in their order (ids order a deployment's log), as four arrays:
    # one statement whatever their number.
    lines = (
        func.unnest(
            bindparam("steps", type_=ARRAY(String)),
            bindparam("levels", type_=ARRAY(String)),
            bindparam("messages", type_=ARRAY(Text)),
            bindparam("created", type_=ARRAY(UTCDateTime)),
        )
        .table_valued(
            column("step", String),
            column("level", String),
            column("message", Text),
            column("created_at", UTCDateTime),
            with_ordinality="ordinal",
            name="line",
        )
        .render_derived()
    )
    logged = (
        insert(_logs)
        .from_select(
            ["deployment_id", "step", "level", "message", "created_at"],
            select(done.c.deployment_id, lines.c.step, lines.c.level, lines.c.message, lines.c.created_at)
            .select_from(done)
            .join(lines, literal(True))
            .order_by(lines.c.ordinal),
        )
        .cte("logged")
    )
    returned = (
        select(*(moved.c[c.key] for c in deployment_columns), *project_columns)
        .select_from(moved.join(_projects, projects.id == moved.c.project_id))
        .add_cte(logged)
    )
    return select(Deployment, Project).from_statement(returned)


_BEGIN = {step: _begin_statement(step) for step in STEPS}
_COMPLETE = {step: _complete_statement(step) for step in STEPS}


def _loaded(
    session: Session, statement: Executable, params: dict[str, Any]
) -> tuple[Deployment, Project] | None:
    row = session.execute(statement, params).first()
    return None if row is None else (row[0], row[1])


def begin(
    session: Session,
    step: str,
    deployment_id: str,
    task_id: str | None,
    now: datetime,
    timeout_s: float,
    line: str,
    capacity: int,
) -> tuple[Deployment, Project] | None:
    """Mark the step in progress if this is the common case, with ``line`` logged; else change nothing.

    ``capacity`` is MAX_CONCURRENT_DEPLOYMENTS, for the step that asks for a sandbox slot: the
    caller holds ``slots.serialise`` for that one. Returns the deployment and its project as they
    are now, without the bulky columns the step does not read; None when the runner must decide by
    the full rule.
    """
    params = {
        "deployment": deployment_id,
        "task": task_id,
        "now": now,
        "cutoff": now - timedelta(seconds=timeout_s),
        "line": line,
        "capacity": capacity,
    }
    return _loaded(session, _BEGIN[step], params)


def complete(
    session: Session, step: str, deployment_id: str, now: datetime, lines: list[dict[str, Any]]
) -> tuple[Deployment, Project] | None:
    """Mark the step completed, move the progress on and log ``lines``; None if the deployment is gone.

    Returns the deployment (locked until the transaction ends) and its project, without their bulky
    columns, for the step's ``record`` to change.
    """
    params = {
        "deployment": deployment_id,
        "now": now,
        "steps": [line["step"] for line in lines],
        "levels": [line["level"] for line in lines],
        "messages": [line["message"] for line in lines],
        "created": [line["created_at"] for line in lines],
    }
    return _loaded(session, _COMPLETE[step], params)
