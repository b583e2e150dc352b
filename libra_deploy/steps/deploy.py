"""Step 5: publish the output to the deploy target, switch the live site to it, attach the domain."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from libra_deploy import domains
from libra_deploy.errors import Conflict, StepError
from libra_deploy.models import Deployment, Project
from libra_deploy.ports import CustomDomains
from libra_deploy.steps.runner import StepContext


def site_url(public_url: str, project_id: str) -> str:
    return f"{public_url}/sites/{project_id}/"


@dataclass(frozen=True)
class DeployResult:
    url: str
    #: The deployment's own URL at the target, when the target gives one.
    target_url: str | None = None


def execute(ctx: StepContext) -> DeployResult:
    deployment, project = ctx.deployment, ctx.project
    manifest = deployment.output_manifest or {}
    target = ctx.runtime.target
    if deployment.custom_domain:
        try:
            with ctx.runtime.sessions() as session:
                domains.ensure_available(session, deployment.custom_domain, project_id=project.id)
        except Conflict as exc:
            raise StepError(exc.message, code=exc.code) from None
    published = target.publish(project.id, deployment.id, manifest, ctx.runtime.store)
    ctx.log(
        f"Published {len(manifest)} files to the {target.name} target "
        f"({published.uploaded_files} uploaded, {published.uploaded_bytes} bytes)"
    )
    entry = "index.html" if "index.html" in manifest else next(iter(manifest))
    if target.open(project.id, deployment.id, entry) is None:
        raise StepError(f"the {target.name} target does not serve {entry} after publishing", retryable=True)
    target.activate(project.id, deployment.id)
    url = site_url(ctx.runtime.settings.public_url, project.id)
    ctx.log(
        f"Live at {url}" + (f" and https://{deployment.custom_domain}/" if deployment.custom_domain else "")
    )
    if published.url:
        ctx.log(f"This deployment's own URL at the {target.name} target: {published.url}")
    if deployment.custom_domain and isinstance(target, CustomDomains):
        domain = target.attach_domain(project.id, deployment.custom_domain)
        ctx.log(
            f"Custom domain {deployment.custom_domain} at the {target.name} target: {domain.status}"
            + (f" ({domain.detail})" if domain.detail else ""),
            "warning" if domain.status == "error" else "info",
        )
    return DeployResult(url, published.url)


def record(session: Session, deployment: Deployment, project: Project, result: DeployResult) -> None:
    url = result.url
    deployment.url = url
    deployment.target_url = result.target_url
    project.production_deploy_url = url
    project.production_deployment_id = deployment.id
    if deployment.custom_domain and project.custom_domain != deployment.custom_domain:
        project.custom_domain = deployment.custom_domain
        try:
            session.flush()
        except IntegrityError:
            raise StepError(
                domains.domain_taken(deployment.custom_domain).message, code="DOMAIN_TAKEN"
            ) from None
