"""Step 2: assemble the source tree: the project's stored files with the request's changes on top.

Uploaded files were stored content-addressed when the deployment was accepted; this step merges the
trees, checks that every blob is really in the object store, and records the manifest on the
deployment and as the project's new stored files.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from libra_deploy.errors import InvalidInput, StepError
from libra_deploy.models import Deployment, Project
from libra_deploy.ports import Manifest
from libra_deploy.sources import blob_key, check_tree, merge_manifest
from libra_deploy.steps.runner import StepContext


def execute(ctx: StepContext) -> Manifest:
    request = ctx.deployment.request or {}
    changes = request.get("files") or {}
    manifest = merge_manifest(
        ctx.project.source_manifest or {}, changes, replace=bool(request.get("replaceFiles"))
    )
    if not manifest:
        raise StepError("there is nothing to deploy: the project has no files", code="NO_FILES")
    try:
        check_tree(manifest)
    except InvalidInput as exc:
        raise StepError(exc.message, code="INVALID_SOURCE_TREE") from None
    missing = ctx.runtime.store.missing({blob_key(e["sha256"]) for e in manifest.values()})
    if missing:
        raise StepError(
            f"{len(missing)} source file(s) are missing from the object store (first: {sorted(missing)[0]})",
            code="SOURCE_MISSING",
        )
    size = sum(e["size"] for e in manifest.values())
    changed = sum(1 for e in changes.values() if e is not None)
    deleted = sum(1 for e in changes.values() if e is None)
    ctx.log(f"Source: {len(manifest)} files, {size} bytes ({changed} uploaded, {deleted} deleted)")
    return manifest


def record(session: Session, deployment: Deployment, project: Project, manifest: Manifest) -> None:
    deployment.source_manifest = manifest
    project.source_manifest = manifest
