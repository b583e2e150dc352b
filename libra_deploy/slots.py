"""Sandbox slots: at most MAX_CONCURRENT_DEPLOYMENTS deployments hold a sandbox at once, across
every worker.

A deployment asks for a slot when it reaches its sandbox step and gives it back when cleanup has
destroyed the sandbox. The slot is a pair of timestamps on the deployment row, so it cannot be
leaked by a dying worker: the reaper resumes or fails that deployment, and its cleanup frees it.
Deployments that already hold a slot never wait; the others are served in the order they asked.

A slot changes hands without polling: the cleanup that gives one back names the deployments whose
turn has come (:func:`turn_come`), and the task layer publishes their sandbox step once that
cleanup has committed. A waiter still asks again on its own (:func:`wait_s`), but seldom: that is
the fallback for a hand-over that was never published, not the way the line moves.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, case, func, select, text
from sqlalchemy.orm import Session

from libra_deploy.config import Settings
from libra_deploy.models import ACTIVE_STATUSES, Deployment

#: The transaction-scoped advisory lock that serialises slot grants on PostgreSQL (SQLite's
#: BEGIN IMMEDIATE already serialises every writer).
_ADVISORY_LOCK = 0x11B2A_510
#: The longest a waiter waits before asking again. Under half the heartbeat timeout as well, since
#: each ask is a waiter's heartbeat: a waiter must not look like a deployment whose worker died.
MAX_WAIT_S = 30.0

#: A deployment in the line for a slot: queued or running, asked for one, not given one yet.
#: Queued too: a replay that resumes at sandbox, build or deploy asks for its slot before any of its
#: steps has begun, and a deployment is in_progress only once a step begins (the runner), so it
#: waits in the line as queued. (A fresh deployment asks at its sandbox step, after validate began.)
_WAITING = (
    Deployment.status.in_(ACTIVE_STATUSES),
    Deployment.slot_requested_at.is_not(None),
    Deployment.slot_acquired_at.is_(None),
)


def holds_slot(deployment: Deployment) -> bool:
    return deployment.slot_acquired_at is not None and deployment.slot_released_at is None


def waiting() -> ColumnElement[bool]:
    """SQL: the deployment is in the line for a slot (its asks, not a step, keep its heartbeat)."""
    return and_(*_WAITING)


def is_waiting(deployment: Deployment) -> bool:
    """:func:`waiting`, of a loaded deployment."""
    return (
        deployment.status in ACTIVE_STATUSES
        and deployment.slot_requested_at is not None
        and deployment.slot_acquired_at is None
    )


def try_acquire(session: Session, deployment: Deployment, capacity: int, now: datetime) -> int | None:
    """Take a free slot for ``deployment`` if its turn has come and return None; else record that it
    asked (once) and return how many deployments wait in the line ahead of it."""
    if holds_slot(deployment):
        return None
    if deployment.slot_requested_at is None:
        deployment.slot_requested_at = now
    ahead_of_it = _line().where(Deployment.slot_requested_at < deployment.slot_requested_at)
    # Neither count includes this deployment, whatever its row says: no need to flush it first
    # (the change is written once, with the rest of the step's, instead of twice).
    with session.no_autoflush:
        serialise(session)
        held, ahead = session.execute(select(_held().scalar_subquery(), ahead_of_it.scalar_subquery())).one()
    if held + ahead >= capacity:
        return int(ahead)
    deployment.slot_acquired_at = now
    return None


def free_for_a_newcomer(capacity: ColumnElement[int]) -> ColumnElement[bool]:
    """SQL: a deployment asking for a slot now would get one at once. The held slots and the whole
    line (everyone waiting asked before it) leave one free. For a statement that runs under
    :func:`serialise`; the counts do not correlate with a ``deployments`` the statement selects."""
    held = _held().correlate(None).scalar_subquery()
    line = _line().correlate(None).scalar_subquery()
    return held + line < capacity


def wait_s(settings: Settings, ahead: int) -> float:
    """How long a waiter with ``ahead`` deployments before it waits before asking again.

    Each full round of ``capacity`` deployments before it adds a SLOT_WAIT_INTERVAL: a waiter far
    back asks seldom, as its turn is far off and the hand-over will call it anyway.
    """
    rounds = 1 + ahead // settings.max_concurrent_deployments
    longest = max(settings.slot_wait_s, min(MAX_WAIT_S, settings.heartbeat_timeout_s / 2))
    return min(settings.slot_wait_s * rounds, longest)


def release(deployment: Deployment, now: datetime) -> None:
    if holds_slot(deployment):
        deployment.slot_released_at = now


def turn_come(session: Session, capacity: int) -> list[str]:
    """The waiters that may take a slot now, oldest first: as many as slots are free.

    Called in the transaction that gives a slot back. Under the advisory lock, two cleanups that
    give back a slot at the same moment count each other's release, and so call two waiters, not
    the first one twice. Waking one that cannot take a slot after all costs one task, no more.
    """
    serialise(session)
    held = _held().scalar_subquery()
    # One statement: it runs after every cleanup, and there is mostly nobody waiting.
    free = case((held < capacity, capacity - held), else_=0)
    return list(
        session.scalars(
            select(Deployment.id).where(*_WAITING).order_by(Deployment.slot_requested_at).limit(free)
        )
    )


def serialise(session: Session) -> None:
    """Take the lock that serialises slot grants, until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})


def _line() -> Select[int]:
    """How many deployments wait in the line for a slot."""
    return select(func.count()).select_from(Deployment).where(*_WAITING)


def _held() -> Select[int]:
    """How many slots are held."""
    return (
        select(func.count())
        .select_from(Deployment)
        .where(Deployment.slot_acquired_at.is_not(None), Deployment.slot_released_at.is_(None))
    )
