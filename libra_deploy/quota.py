"""Deployment quotas: a limit per organisation and calendar month (UTC), charged exactly once.

Every deployment moves through the ``quota_ledger`` table, one row per (deployment, kind):

``reserve``
    made by POST /deploy in the transaction that records the deployment, only when a unit is left
    (otherwise 429 DEPLOYMENT_QUOTA_EXCEEDED and nothing is recorded);
``consume``
    when the deployment completes (the cleanup step);
``release``
    when it fails, is cancelled or is dead-lettered: the unit is given back.

The unique (deployment, kind) constraint means a retry, a redelivery or a replay can never charge or
refund twice. A unit is *used* once consumed (also when a replayed deployment completes after its
release), *reserved* while it is neither consumed nor released, and free again once released.

Reservations are race-free because POST /deploy locks the organisation's row before it counts: two
requests of one organisation take turns from there to their commit, on PostgreSQL with a row lock,
on SQLite because every write transaction holds the database lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Executable, bindparam, exists, func, insert, literal, or_, select
from sqlalchemy.orm import Session, aliased

from libra_deploy.config import Settings
from libra_deploy.db import UTCDateTime, table_of, utcnow
from libra_deploy.errors import InvalidInput, NotFound, TooManyRequests
from libra_deploy.models import ACTIVE_STATUSES, Deployment, Organization, QuotaLedger

RESERVE, CONSUME, RELEASE = "reserve", "consume", "release"
#: When an organisation has too many deployments queued or running, when to try again: about
#: the time a small deployment takes.
CAP_RETRY_AFTER_S = 30
#: The largest quota organizations.deploy_quota (a 32-bit integer column) holds.
MAX_QUOTA = 2**31 - 1


@dataclass(frozen=True)
class Usage:
    """An organisation's quota in one period."""

    org_id: str
    limit: int
    used: int
    reserved: int
    period: str
    period_start: datetime
    period_end: datetime

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used - self.reserved, 0)


def period_of(moment: datetime) -> str:
    """The calendar month (UTC) a moment belongs to, as "YYYY-MM"."""
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """The first instant of the period and the first instant of the next one (UTC)."""
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def limit_of(org: Organization, settings: Settings) -> int:
    return settings.default_deploy_quota if org.deploy_quota is None else org.deploy_quota


# POST /deploy runs these on every request, holding the organisation's lock: they are built once,
# bound by parameters (building a statement costs more than the count it runs).
_consumed = aliased(QuotaLedger)
#: The ledger rows of each kind in one period, and the releases followed by a consumption (a
#: replayed deployment that completed), which are uses: one query.
_USAGE = select(
    *(func.count().filter(QuotaLedger.kind == kind) for kind in (CONSUME, RESERVE, RELEASE)),
    func.count().filter(
        QuotaLedger.kind == RELEASE,
        exists().where(_consumed.deployment_id == QuotaLedger.deployment_id, _consumed.kind == CONSUME),
    ),
).where(QuotaLedger.org_id == bindparam("org_id"), QuotaLedger.period == bindparam("period"))
#: What an admission counts, in one round trip: the ledger's counts, then the organisation's active
#: deployments.
_ADMISSION = _USAGE.add_columns(
    select(func.count())
    .where(Deployment.org_id == bindparam("org_id"), Deployment.status.in_(ACTIVE_STATUSES))
    .scalar_subquery()
)
_RESERVE = insert(table_of(QuotaLedger))
# FOR NO KEY UPDATE: it serialises the admissions of one organisation without conflicting with the
# key-share locks that inserting rows which reference the organisation takes.
_LOCK_ORG = (
    select(Organization)
    .where(Organization.id == bindparam("org_id"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)


def _locked_org(session: Session, org_id: str) -> Organization | None:
    """The organisation's row, locked until the transaction ends (admissions take turns here)."""
    return session.scalars(_LOCK_ORG, {"org_id": org_id}).one_or_none()


def usage(session: Session, settings: Settings, org: Organization, period: str | None = None) -> Usage:
    """How much of the organisation's quota is used and reserved in ``period`` (this month by default)."""
    period = period or period_of(utcnow())
    counts = session.execute(_USAGE, {"org_id": org.id, "period": period}).one()
    return _usage(settings, org, period, counts)


def _usage(settings: Settings, org: Organization, period: str, counts: Sequence[int | None]) -> Usage:
    """The usage from the ledger's counts as ``_USAGE`` gives them."""
    consumes, reserves, releases, released_then_used = (int(count or 0) for count in counts)
    used = consumes
    released = releases - released_then_used
    start, end = period_bounds(period)
    return Usage(
        org_id=org.id,
        limit=limit_of(org, settings),
        used=used,
        reserved=reserves - used - released,
        period=period,
        period_start=start,
        period_end=end,
    )


def admit(session: Session, settings: Settings, deployment: Deployment) -> None:
    """Check the organisation's cap on active deployments, then reserve one unit of its quota.

    ``deployment`` is already flushed (it counts as active). Raises TooManyRequests when the cap or
    the quota is exhausted; the caller's transaction, rolled back, then leaves nothing behind.
    """
    org = _locked_org(session, deployment.org_id)
    if org is None:
        raise NotFound(f"organisation {deployment.org_id} does not exist", code="ORG_NOT_FOUND")
    now = utcnow()
    period = period_of(now)
    # Counted after the lock is held (a statement of its own, so it sees every admission before).
    *counts, active = session.execute(_ADMISSION, {"org_id": org.id, "period": period}).one()
    cap = settings.max_active_deployments_per_org
    if (active or 0) > cap:
        raise TooManyRequests(
            f"The organisation has {cap} deployments queued or running, its limit "
            f"(MAX_ACTIVE_DEPLOYMENTS_PER_ORG); wait for one to finish",
            retry_after=CAP_RETRY_AFTER_S,
            code="TOO_MANY_ACTIVE_DEPLOYMENTS",
            details={"limit": "MAX_ACTIVE_DEPLOYMENTS_PER_ORG", "value": cap},
        )
    current = _usage(settings, org, period, counts)
    if current.remaining <= 0:
        raise _exhausted(current, now)
    row = {"org_id": org.id, "deployment_id": deployment.id, "kind": RESERVE, "period": period}
    session.execute(_RESERVE, row)


def readmit(session: Session, settings: Settings, deployment: Deployment) -> None:
    """Take back, for a replay, the unit the deployment gave back when it failed.

    The release is withdrawn, so the reservation holds again and the replay's outcome settles it
    once; with no unit left the replay is refused (429 DEPLOYMENT_QUOTA_EXCEEDED).
    """
    org = _locked_org(session, deployment.org_id)
    released = session.scalars(
        select(QuotaLedger).where(QuotaLedger.deployment_id == deployment.id, QuotaLedger.kind == RELEASE)
    ).first()
    if org is None or released is None:
        return
    now = utcnow()
    current = usage(session, settings, org, period_of(now))
    if current.remaining <= 0:
        raise _exhausted(current, now)
    session.delete(released)
    session.flush()


def _exhausted(current: Usage, now: datetime) -> TooManyRequests:
    reset = current.period_end
    return TooManyRequests(
        f"Deploy quota exhausted: the organisation has used {current.used} and reserved "
        f"{current.reserved} of its {current.limit} deployments for {current.period}; "
        f"it resets at {reset.isoformat().replace('+00:00', 'Z')}",
        retry_after=max(int((reset - now).total_seconds()), 1),
        code="DEPLOYMENT_QUOTA_EXCEEDED",
        details={
            "limit": current.limit,
            "used": current.used,
            "reserved": current.reserved,
            "period": current.period,
            "resetAt": reset.isoformat().replace("+00:00", "Z"),
        },
    )


def has_reservation(session: Session, deployment_id: str) -> bool:
    return (
        session.scalar(
            select(QuotaLedger.id).where(
                QuotaLedger.deployment_id == deployment_id, QuotaLedger.kind == RESERVE
            )
        )
        is not None
    )


def consume(session: Session, deployment_id: str) -> bool:
    """Charge the deployment's reserved unit (it completed). Returns whether a row was written."""
    return _settle(session, deployment_id, CONSUME)


def release(session: Session, deployment_id: str) -> bool:
    """Give the deployment's unit back (failed, cancelled, dead-lettered), unless it was consumed.

    Idempotent: only the first call for a deployment writes. Returns whether a row was written.
    """
    return _settle(session, deployment_id, RELEASE)


def _settle(session: Session, deployment_id: str, kind: str) -> bool:
    # The reservation's row lock orders a consumption and a release racing for one deployment
    # (a cancel arriving while cleanup completes): the second sees the first and stands down, since
    # the INSERT, a statement of its own, runs after the lock is held and sees what the first wrote.
    if session.scalar(_LOCK_RESERVATION, {"deployment_id": deployment_id}) is None:
        return False
    return session.scalar(_SETTLE[kind], {"deployment_id": deployment_id, "now": utcnow()}) is not None


def _settle_statement(kind: str) -> Executable:
    """INSERT the deployment's row of ``kind``, copied from its reservation, unless a row already
    settles it: a consumption or a release is written once, and nothing is released once consumed."""
    settled_by = (CONSUME,) if kind == CONSUME else (CONSUME, RELEASE)
    ledger = table_of(QuotaLedger)
    reservation, other = ledger.c, aliased(ledger).c
    already_settled = exists().where(
        other.deployment_id == reservation.deployment_id, or_(*(other.kind == k for k in settled_by))
    )
    copy = select(
        reservation.org_id,
        reservation.deployment_id,
        literal(kind),
        reservation.period,
        bindparam("now", type_=UTCDateTime),
    ).where(
        reservation.deployment_id == bindparam("deployment_id"), reservation.kind == RESERVE, ~already_settled
    )
    columns = ["org_id", "deployment_id", "kind", "period", "created_at"]
    return insert(ledger).from_select(columns, copy).returning(ledger.c.id)


_LOCK_RESERVATION = (
    select(QuotaLedger.id)
    .where(QuotaLedger.deployment_id == bindparam("deployment_id"), QuotaLedger.kind == RESERVE)
    .with_for_update()
)
_SETTLE = {kind: _settle_statement(kind) for kind in (CONSUME, RELEASE)}


def set_limit(session: Session, org_id: str, limit: int | None) -> Organization:
    """Set the organisation's deployments per month; None goes back to DEFAULT_DEPLOY_QUOTA."""
    if limit is not None and not 0 <= limit <= MAX_QUOTA:
        raise InvalidInput(
            f"a quota must be from 0 to {MAX_QUOTA} deployments per month", details={"field": "limit"}
        )
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound(f"organisation {org_id} does not exist", code="ORG_NOT_FOUND")
    org.deploy_quota = limit
    session.flush()
    return org
