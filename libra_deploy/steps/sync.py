"""Step 2: assemble the source tree: the project's stored files with the request's changes on top.

A project made from a template starts, on its first deployment, from the template's files.

Uploaded files were stored content-addressed when the deployment was accepted; this step merges the
trees, checks that every blob is really in the object store, and records the manifest on the
deployment and as the project's new stored files.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from libra_deploy import templates
from libra_deploy.errors import InvalidInput, StepError
from libra_deploy.models import Deployment, Project
from libra_deploy.ports import Manifest
from libra_deploy.sources import blob_key, check_tree, merge_manifest, sha256_hex
from libra_deploy.steps.runner import StepContext


def execute(ctx: StepContext) -> Manifest:
    request = ctx.deployment.request or {}
    changes = request.get("files") or {}
    base = ctx.project.source_manifest or {}
    if not base and ctx.project.template:
        base = _template_manifest(ctx, ctx.project.template)
    manifest = merge_manifest(base, changes, replace=bool(request.get("replaceFiles")))
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


def _template_manifest(ctx: StepContext, template: str) -> Manifest:
    """The template's files, stored in the object store like uploads, as the base of a first tree.

    Later deployments start from the project's stored tree, which began as the template: a file
    the user deleted from a templated project stays deleted.
    """
    files = templates.files(template)
    blobs = {sha256_hex(data): data for data in files.values()}
    store = ctx.runtime.store
    for key in store.missing(blob_key(sha) for sha in blobs):
        store.put(key, blobs[key.removeprefix("blobs/")])
    ctx.log(f"Template {template}: {len(files)} files laid under the project's own")
    return {path: {"sha256": sha256_hex(data), "size": len(data)} for path, data in files.items()}


def record(session: Session, deployment: Deployment, project: Project, manifest: Manifest) -> None:
    deployment.source_manifest = manifest
    project.source_manifest = manifest
    project.source_file_count = len(manifest)
