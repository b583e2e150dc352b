"""Step 1: check that the deployment may run. Its errors are permanent: retrying cannot fix them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from libra_deploy import domains, quota
from libra_deploy.errors import LibraError, StepError
from libra_deploy.models import Deployment, Project
from libra_deploy.steps.runner import StepContext


def execute(ctx: StepContext) -> None:
    deployment, project = ctx.deployment, ctx.project
    if not deployment.project_id or not deployment.org_id:
        raise StepError("the deployment has no project or organisation", code="DEPLOYMENT_VALIDATION_FAILED")
    if project.org_id != deployment.org_id:
        raise StepError(f"project {project.id} does not belong to the organisation", code="PROJECT_NOT_FOUND")
    if not project.is_active:
        raise StepError(f"project {project.id} is not active", code="PROJECT_INACTIVE")
    with ctx.runtime.read_sessions() as session:
        reserved = quota.has_reservation(session, deployment.id)
    if not reserved:
        # POST /deploy reserves a unit before it queues anything; a deployment without one did not
        # come through it and must not run uncharged.
        raise StepError(
            f"deployment {deployment.id} holds no reservation of the deploy quota", code="QUOTA_NOT_RESERVED"
        )
    if deployment.custom_domain:
        try:
            domain = domains.normalize(deployment.custom_domain, ctx.runtime.settings)
            with ctx.runtime.read_sessions() as session:
                domains.ensure_available(session, domain, project_id=project.id)
        except LibraError as exc:
            raise StepError(exc.message, code=exc.code) from None
    ctx.log(
        f"Project {project.name} ({project.id}) is active"
        + (f"; domain {deployment.custom_domain} is free" if deployment.custom_domain else "")
    )


def record(session: Session, deployment: Deployment, project: Project, result: None) -> None:
    """Validation produces nothing to store."""
