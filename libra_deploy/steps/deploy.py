"""Step 5: publish the output to the deploy target, switch the live site to it, attach the domain."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from libra_deploy import domains, site_rules
from libra_deploy.errors import Conflict, StepError
from libra_deploy.models import Deployment, Project
from libra_deploy.ports import CustomDomains, Manifest
from libra_deploy.sources import blob_key
from libra_deploy.steps.runner import StepContext

#: Warnings about _redirects and _headers logged per deployment; a broken file can have thousands.
MAX_RULE_WARNINGS = 50


def site_url(public_url: str, project_id: str) -> str:
    """The project's live site: whichever deployment is live."""
    return f"{public_url}/sites/{project_id}/"


def deployment_url(public_url: str, project_id: str, deployment_id: str) -> str:
    """One deployment's own, immutable URL: it serves that deployment for as long as it is kept."""
    return f"{public_url}/sites/{project_id}@{deployment_id}/"


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
            with ctx.runtime.read_sessions() as session:
                domains.ensure_available(session, deployment.custom_domain, project_id=project.id)
        except Conflict as exc:
            raise StepError(exc.message, code=exc.code) from None
    published = target.publish(project.id, deployment.id, manifest, ctx.runtime.store)
    ctx.log(
        f"Published {len(manifest)} files to the {target.name} target "
        f"({published.uploaded_files} uploaded, {published.uploaded_bytes} bytes)"
    )
    for warning in published.warnings:
        ctx.log(warning, "warning")
    _check_site_rules(ctx, manifest)
    entry = "index.html" if "index.html" in manifest else next(iter(manifest))
    if target.open(project.id, deployment.id, entry) is None:
        raise StepError(f"the {target.name} target does not serve {entry} after publishing", retryable=True)
    # Cancel or switch, decided under the deployment's row lock: a cancel that came first stops the
    # step here, with the live site as it was; once this returns, a cancel is refused (409). The
    # domain is taken in that transaction: another project may have taken it since the check above.
    wanted = deployment.custom_domain
    ctx.begin_live_switch(partial(_claim_domain, project.id, wanted) if wanted else None)
    target.activate(project.id, deployment.id)
    url = site_url(ctx.runtime.settings.public_url, project.id)
    ctx.log(
        f"Live at {url}" + (f" and https://{deployment.custom_domain}/" if deployment.custom_domain else "")
    )
    own_url = deployment_url(ctx.runtime.settings.public_url, project.id, deployment.id)
    ctx.log(f"This deployment stays at {own_url}")
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


def _check_site_rules(ctx: StepContext, manifest: Manifest) -> None:
    """Parse the output's _redirects and _headers so that their mistakes show in the log."""
    texts = {
        name: site_rules.decode(ctx.runtime.store.get(blob_key(manifest[name]["sha256"])))
        for name in site_rules.RULE_FILES
        if name in manifest
    }
    if not texts:
        return
    rules = site_rules.parse(texts.get(site_rules.REDIRECTS), texts.get(site_rules.HEADERS))
    ctx.log(f"Site rules: {len(rules.redirects)} redirects and rewrites, {len(rules.headers)} header rules")
    for warning in rules.warnings[:MAX_RULE_WARNINGS]:
        ctx.log(str(warning), "warning")
    if len(rules.warnings) > MAX_RULE_WARNINGS:
        more = len(rules.warnings) - MAX_RULE_WARNINGS
        ctx.log(f"... and {more} more warnings about site rules", "warning")


def _claim_domain(project_id: str, domain: str, session: Session) -> None:
    """The project takes ``domain`` before its live site switches, or the step fails DOMAIN_TAKEN
    with nothing switched (projects.custom_domain is unique across organisations)."""
    try:
        session.execute(update(Project).where(Project.id == project_id).values(custom_domain=domain))
    except IntegrityError:
        raise StepError(domains.domain_taken(domain).message, code="DOMAIN_TAKEN") from None


def record(session: Session, deployment: Deployment, project: Project, result: DeployResult) -> None:
    # The custom domain was taken with the switch (_claim_domain).
    url = result.url
    deployment.url = url
    deployment.target_url = result.target_url
    project.production_deploy_url = url
    project.production_deployment_id = deployment.id
