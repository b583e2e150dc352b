"""Step 6: destroy the sandbox, keep the full log, finish the deployment.

Cleanup also runs after a failure or a cancel: then it releases what the deployment held and leaves
its status as it is.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from libra_deploy import quota, slots, webhooks
from libra_deploy.db import utcnow
from libra_deploy.models import Deployment, DeploymentLog, DeploymentStatus, Project, ProjectStatus
from libra_deploy.steps.runner import StepContext


def log_key(deployment_id: str) -> str:
    return f"logs/{deployment_id}.log"


def execute(ctx: StepContext) -> None:
    deployment = ctx.deployment
    if deployment.sandbox_id and deployment.sandbox_provider:
        ctx.runtime.sandbox(deployment.sandbox_provider).destroy(deployment.sandbox_id)
        ctx.log(f"Sandbox {deployment.sandbox_id} destroyed")
    ctx.logs.flush()
    with ctx.runtime.read_sessions() as session:
        rows = session.execute(
            select(DeploymentLog.created_at, DeploymentLog.step, DeploymentLog.message)
            .where(DeploymentLog.deployment_id == deployment.id)
            .order_by(DeploymentLog.id)
        ).all()
    text = "".join(f"{at.isoformat()} [{step or '-'}] {message}\n" for at, step, message in rows)
    ctx.runtime.store.put(log_key(deployment.id), text.encode(), content_type="text/plain; charset=utf-8")


def record(session: Session, deployment: Deployment, project: Project, result: None) -> None:
    now = utcnow()
    deployment.finished_at = deployment.finished_at or now
    if deployment.sandbox_id and deployment.sandbox_destroyed_at is None:
        deployment.sandbox_destroyed_at = now
    slots.release(deployment, now)
    if deployment.status == DeploymentStatus.IN_PROGRESS:
        deployment.status = DeploymentStatus.COMPLETED
        deployment.current_step = None
        project.deployment_status = ProjectStatus.DEPLOYED
        elapsed = (now - (deployment.started_at or deployment.created_at)).total_seconds()
        session.add(
            DeploymentLog(
                deployment_id=deployment.id,
                step="cleanup",
                message=f"Deployment completed in {elapsed:.1f} s",
            )
        )
        quota.consume(session, deployment.id)
        # In the transaction that completes the deployment: the event cannot be lost or invented.
        webhooks.record_event(session, deployment, "deployment.completed")
