"""Step 3: create the deployment's sandbox and put the source tree into it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from libra_deploy.db import utcnow
from libra_deploy.models import Deployment, Project
from libra_deploy.ports import Manifest, ObjectStore, SandboxProvider, SandboxSpec
from libra_deploy.sources import blob_key
from libra_deploy.steps.runner import StepContext


@dataclass(frozen=True)
class SandboxRef:
    provider: str
    sandbox_id: str
    created_at: datetime


def execute(ctx: StepContext) -> SandboxRef:
    deployment = ctx.deployment
    if deployment.sandbox_id and deployment.sandbox_provider:
        # A previous attempt left a sandbox behind: start from a clean one rather than trust it.
        ctx.runtime.sandbox(deployment.sandbox_provider).destroy(deployment.sandbox_id)
    return prepare(ctx)


def prepare(ctx: StepContext) -> SandboxRef:
    """Create a sandbox holding the deployment's source tree."""
    deployment = ctx.deployment
    # The project's own provider when it chose one, else SANDBOX_BUILDER_DEFAULT_PROVIDER.
    provider = ctx.runtime.sandbox(ctx.project.sandbox_provider)
    spec = SandboxSpec(
        deployment_id=deployment.id,
        project_id=deployment.project_id,
        lifetime_s=ctx.runtime.settings.deployment_timeout_s,
    )
    sandbox_id = provider.create(spec)
    created_at = utcnow()
    # From here on a cancel must reach this sandbox, whichever step is using it.
    ctx.on_cancel(lambda: provider.destroy(sandbox_id))
    manifest = deployment.source_manifest or {}
    provider.write_files(sandbox_id, _contents(ctx.runtime.store, manifest))
    ctx.log(f"Sandbox {sandbox_id} ({provider.name}) holds {len(manifest)} files")
    return SandboxRef(provider.name, sandbox_id, created_at)


def ensure(ctx: StepContext) -> tuple[SandboxProvider, SandboxRef]:
    """The deployment's sandbox, recreated when cleanup or a lost worker took it away.

    Steps may run on different machines, and a replayed deployment resumes after its cleanup
    released the sandbox; a step that needs the sandbox therefore checks it is there first.
    """
    deployment = ctx.deployment
    if deployment.sandbox_id and deployment.sandbox_provider:
        provider = ctx.runtime.sandbox(deployment.sandbox_provider)
        if provider.exists(deployment.sandbox_id):
            sandbox_id = deployment.sandbox_id
            ctx.on_cancel(lambda: provider.destroy(sandbox_id))
            created_at = deployment.sandbox_created_at or utcnow()
            return provider, SandboxRef(deployment.sandbox_provider, sandbox_id, created_at)
        ctx.log(f"Sandbox {deployment.sandbox_id} is gone; creating a new one")
    ref = prepare(ctx)
    return ctx.runtime.sandbox(ref.provider), ref


def _contents(store: ObjectStore, manifest: Manifest) -> Iterator[tuple[str, bytes]]:
    # A generator: the tree is streamed into the sandbox, never held in memory all at once.
    for path, entry in manifest.items():
        yield path, store.get(blob_key(str(entry["sha256"])))


def record(session: Session, deployment: Deployment, project: Project, result: SandboxRef) -> None:
    remember(deployment, result)


def remember(deployment: Deployment, ref: SandboxRef) -> None:
    deployment.sandbox_provider, deployment.sandbox_id = ref.provider, ref.sandbox_id
    deployment.sandbox_created_at = deployment.sandbox_created_at or ref.created_at
