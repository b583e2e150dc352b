"""Which deployment is live: promote any completed one, roll back to an earlier one, pin to keep.

Every completed deployment stays published under its own URL (``/sites/<project>@<deployment>/``)
until retention removes it, so making one live is a pointer switch: the target's live pointer, then
the project's production deployment and URL, in one request, with no upload and no build.

Promote
    Any completed, unexpired deployment of the project, newer or older than the live one.
Rollback
    The same switch, restricted to going back: to a given deployment older than the live one, or,
    without one, to the newest completed deployment older than the live one. Rolling back twice
    therefore walks further back.

Both are refused (409) while the project has a deployment queued or running: that deployment goes
live when it completes and would silently undo the switch, and a switch made while its deploy step
activates could leave the target and the database naming different deployments. Both take the
project's row lock, as retention does, so a deployment cannot be removed while it is being made live.

Functions here flush but never commit: the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from libra_deploy.auth import Principal
from libra_deploy.config import Settings
from libra_deploy.deployments import deployment_in_progress, get_deployment
from libra_deploy.errors import Conflict, NotFound, ProviderError, ServiceUnavailable
from libra_deploy.models import (
    ACTIVE_STATUSES,
    Deployment,
    DeploymentLog,
    DeploymentStatus,
    Project,
    ProjectStatus,
    is_plausible_id,
)
from libra_deploy.ports import DeployTarget
from libra_deploy.steps.deploy import site_url


@dataclass(frozen=True)
class Promotion:
    project: Project
    deployment: Deployment
    #: The deployment that was live before (None when none was).
    previous_deployment_id: str | None


def promote(
    session: Session,
    settings: Settings,
    target: DeployTarget,
    principal: Principal,
    project_id: str,
    deployment_id: str,
) -> Promotion:
    """Make a completed deployment of the project the live one."""
    project = _lock_project(session, principal.org_id, project_id)
    deployment = _promotable(session, principal.org_id, project, deployment_id)
    return _switch(session, settings, target, principal, project, deployment, "Promoted")


def rollback(
    session: Session,
    settings: Settings,
    target: DeployTarget,
    principal: Principal,
    project_id: str,
    deployment_id: str | None = None,
) -> Promotion:
    """Make an earlier completed deployment live: ``deployment_id``, or the one before the live one."""
    project = _lock_project(session, principal.org_id, project_id)
    live_id = project.production_deployment_id
    live = session.get(Deployment, live_id) if live_id else None
    if live is None:
        raise Conflict(
            f"project {project.id} has no live deployment to roll back from", code="NOTHING_TO_ROLL_BACK"
        )
    if deployment_id is None:
        deployment_id = session.scalars(
            select(Deployment.id)
            .where(
                Deployment.project_id == project.id,
                Deployment.status == DeploymentStatus.COMPLETED,
                Deployment.expired_at.is_(None),
                Deployment.created_at < live.created_at,
            )
            .order_by(Deployment.created_at.desc(), Deployment.id.desc())
            .limit(1)
        ).first()
        if deployment_id is None:
            raise Conflict(
                f"project {project.id} has no completed deployment older than the live one ({live.id})",
                code="NOTHING_TO_ROLL_BACK",
            )
    deployment = _promotable(session, principal.org_id, project, deployment_id)
    if (deployment.created_at, deployment.id) >= (live.created_at, live.id):
        raise Conflict(
            f"deployment {deployment.id} is not older than the live deployment {live.id}; "
            "a rollback goes back, use promote to make a newer deployment live",
            code="NOT_AN_EARLIER_DEPLOYMENT",
        )
    return _switch(session, settings, target, principal, project, deployment, "Rolled back")


def set_pinned(session: Session, principal: Principal, deployment_id: str, pinned: bool) -> Deployment:
    """Pin a deployment (retention keeps it whatever its age) or unpin it."""
    deployment = get_deployment(session, principal.org_id, deployment_id)
    # Retention decides under the project's row lock; taking it too means a pin is either seen by a
    # running collection or made after it, never lost in between.
    session.get(Project, deployment.project_id, with_for_update=True)
    session.refresh(deployment)
    if pinned and deployment.expired_at is not None:
        raise _expired(deployment)
    deployment.pinned = pinned
    session.flush()
    return deployment


def is_servable(session: Session, project_id: str, deployment_id: str) -> bool:
    """Whether ``/sites/<project>@<deployment>/`` serves: completed, of that project, not expired."""
    found = session.scalars(
        select(Deployment.id).where(
            Deployment.id == deployment_id,
            Deployment.project_id == project_id,
            Deployment.status == DeploymentStatus.COMPLETED,
            Deployment.expired_at.is_(None),
        )
    ).first()
    return found is not None


def _lock_project(session: Session, org_id: str, project_id: str) -> Project:
    # As accounts.get_project: an id that cannot be one never reaches the database (a NUL is 404).
    project = session.get(Project, project_id, with_for_update=True) if is_plausible_id(project_id) else None
    if project is None or project.org_id != org_id:
        raise NotFound(
            "The specified project does not exist or you do not have access to it", code="PROJECT_NOT_FOUND"
        )
    return project


def _expired(deployment: Deployment) -> Conflict:
    return Conflict(
        f"deployment {deployment.id} was removed by retention; it can no longer be served",
        code="DEPLOYMENT_EXPIRED",
    )


def _promotable(session: Session, org_id: str, project: Project, deployment_id: str) -> Deployment:
    deployment = get_deployment(session, org_id, deployment_id)
    if deployment.project_id != project.id:
        raise Conflict(
            f"deployment {deployment.id} belongs to another project, not to {project.id}",
            code="DEPLOYMENT_NOT_OF_PROJECT",
        )
    if deployment.status != DeploymentStatus.COMPLETED:
        raise Conflict(
            f"deployment {deployment.id} is {deployment.status}; only a completed deployment can go live",
            code="DEPLOYMENT_NOT_COMPLETED",
        )
    if deployment.expired_at is not None:
        raise _expired(deployment)
    running = session.scalars(
        select(Deployment.id).where(
            Deployment.project_id == project.id, Deployment.status.in_(ACTIVE_STATUSES)
        )
    ).first()
    if running is not None:
        raise deployment_in_progress(project.id)
    return deployment


def _switch(
    session: Session,
    settings: Settings,
    target: DeployTarget,
    principal: Principal,
    project: Project,
    deployment: Deployment,
    verb: str,
) -> Promotion:
    previous = project.production_deployment_id
    try:
        target.activate(project.id, deployment.id)
    except ProviderError as exc:
        if exc.retryable:
            raise ServiceUnavailable(f"the {target.name} target failed: {exc.message}") from None
        raise Conflict(
            f"deployment {deployment.id} cannot go live: {exc.message}", code="DEPLOYMENT_NOT_PUBLISHED"
        ) from None
    project.production_deployment_id = deployment.id
    project.production_deploy_url = site_url(settings.public_url, project.id)
    project.deployment_status = ProjectStatus.DEPLOYED
    session.add(
        DeploymentLog(
            deployment_id=deployment.id,
            message=f"{verb} to production by {principal.user_id} (live before: {previous or 'none'})",
        )
    )
    session.flush()
    return Promotion(project=project, deployment=deployment, previous_deployment_id=previous)
