"""Retention and garbage collection: old deployments go, and so do the blobs nothing needs.

Per project, the newest RETENTION_KEEP deployments (of any status) are kept, and so is every
deployment that is live (by the database's pointer or the target's), pinned, or queued or running.
The others expire: the target stops serving them (``DeployTarget.remove``), their full log, build
log and build artifact leave the object store, and their row stays as the record, with
``expired_at`` set. A project is handled under its row lock, which promote, rollback and pin take
too, so a deployment is never made live or pinned while it is being removed.

Blobs (``blobs/<sha256>``) are referenced by the project's stored files and by the source, the
request and the output of every deployment that has not expired. An unreferenced blob is not deleted
at once: a running build stores its output before it records it, and a client uploads by hash before
it deploys. It becomes a candidate, and is deleted by a later run once it has stayed unreferenced for
GC_BLOB_GRACE seconds (and is still unreferenced by anything created meanwhile).

``collect_garbage`` is what ``libra-deploy gc`` and the periodic job call.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from libra_deploy import idempotency
from libra_deploy.db import in_batches, insert_ignoring_duplicates, scan, transaction, utcnow
from libra_deploy.errors import LibraError
from libra_deploy.models import ACTIVE_STATUSES, BlobCandidate, Deployment, OwnedBlob, Project
from libra_deploy.runtime import Runtime
from libra_deploy.sources import blob_key
from libra_deploy.steps.build import artifact_key, build_log_key
from libra_deploy.steps.cleanup import log_key

BLOB_PREFIX = blob_key("")


@dataclass
class GcReport:
    dry_run: bool
    #: Deployments that expired (or, in a dry run, would expire).
    expired_deployments: list[str] = field(default_factory=list)
    #: Blob keys deleted (or, in a dry run, that would be).
    deleted_blobs: list[str] = field(default_factory=list)
    #: Unreferenced blobs still within their grace period.
    pending_blobs: int = 0
    #: Projects whose deployments could not be removed this time, with the reason.
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "expiredDeployments": self.expired_deployments,
            "deletedBlobs": self.deleted_blobs,
            "pendingBlobs": self.pending_blobs,
            "errors": self.errors,
        }


def collect_garbage(runtime: Runtime, dry_run: bool = False) -> GcReport:
    """Expire old deployments and delete the blobs nothing references any more."""
    report = GcReport(dry_run=dry_run)
    started = utcnow()
    for project_id in _crowded_projects(runtime):
        try:
            report.expired_deployments += _expire(runtime, project_id, dry_run)
        except LibraError as exc:
            # One project's target trouble must not stop the collection of the others.
            report.errors.append(f"{project_id}: {exc.message}")
    _sweep_blobs(runtime, started, dry_run, report)
    if not dry_run:
        with transaction(runtime.sessions) as session:
            idempotency.forget_expired(session, started)
    return report


def _crowded_projects(runtime: Runtime) -> list[str]:
    """Projects with more unexpired deployments than retention keeps: the only ones to look at."""
    with scan(runtime.sessions) as session:
        return list(
            session.scalars(
                select(Deployment.project_id)
                .where(Deployment.expired_at.is_(None))
                .group_by(Deployment.project_id)
                .having(func.count() > runtime.settings.retention_keep)
                .order_by(Deployment.project_id)
            )
        )


def _expire(runtime: Runtime, project_id: str, dry_run: bool) -> list[str]:
    with transaction(runtime.sessions) as session:
        project = session.get(Project, project_id, with_for_update=True)
        if project is None:
            return []
        deployments = session.scalars(
            select(Deployment)
            .where(Deployment.project_id == project_id, Deployment.expired_at.is_(None))
            .order_by(Deployment.created_at.desc(), Deployment.id.desc())
        ).all()
        live = {project.production_deployment_id, runtime.target.live_deployment(project_id)}
        doomed = [
            d
            for d in deployments[runtime.settings.retention_keep :]
            if d.id not in live and not d.pinned and d.status not in ACTIVE_STATUSES
        ]
        if dry_run:
            return [d.id for d in doomed]
        now = utcnow()
        for deployment in doomed:
            runtime.target.remove(project_id, deployment.id)
            for key in (log_key(deployment.id), build_log_key(deployment.id), artifact_key(deployment.id)):
                runtime.store.delete(key)
            deployment.artifact_key = None
            deployment.expired_at = now
        return [d.id for d in doomed]


def _manifest_blobs(*manifests: Mapping[str, Any] | None) -> Iterator[str]:
    for manifest in manifests:
        for entry in (manifest or {}).values():
            # A request's files map a deleted path to None.
            if entry:
                yield blob_key(str(entry["sha256"]))


def _deployment_blobs(session: Session, *conditions: Any, excluding: Collection[str] = ()) -> Iterable[str]:
    rows = session.execute(
        select(Deployment.id, Deployment.source_manifest, Deployment.output_manifest, Deployment.request)
        .where(*conditions)
        .execution_options(yield_per=200)
    )
    for deployment_id, source, output, request in rows:
        if deployment_id not in excluding:
            yield from _manifest_blobs(source, output, (request or {}).get("files"))


def _referenced_blobs(runtime: Runtime, expiring: Collection[str]) -> set[str]:
    """Blobs in use, not counting deployments about to expire (a dry run has not expired them)."""
    with scan(runtime.sessions) as session:
        referenced = set(_deployment_blobs(session, Deployment.expired_at.is_(None), excluding=expiring))
        for (manifest,) in session.execute(select(Project.source_manifest).execution_options(yield_per=200)):
            referenced.update(_manifest_blobs(manifest))
    return referenced


def _referenced_since(runtime: Runtime, started: datetime) -> set[str]:
    """Blobs of deployments created or running since the collection began: the last look before deleting."""
    with scan(runtime.sessions) as session:
        return set(
            _deployment_blobs(
                session,
                or_(Deployment.created_at >= started, Deployment.status.in_(ACTIVE_STATUSES)),
            )
        )


def _sweep_blobs(runtime: Runtime, started: datetime, dry_run: bool, report: GcReport) -> None:
    # List before reading the references: a blob stored after the listing is not looked at, and one
    # referenced after the reading was listed and is caught by the last look (_referenced_since).
    listed = set(runtime.store.list_keys(BLOB_PREFIX))
    unreferenced = listed - _referenced_blobs(runtime, set(report.expired_deployments))
    with scan(runtime.sessions) as session:
        known = {
            key: first_seen
            for key, first_seen in session.execute(select(BlobCandidate.key, BlobCandidate.first_seen_at))
        }
    cutoff = started - timedelta(seconds=runtime.settings.gc_blob_grace_s)
    waiting = {key for key in unreferenced if known.get(key, started) > cutoff}
    if not dry_run:
        with transaction(runtime.sessions) as session:
            _forget(session, [key for key in known if key not in unreferenced])
            new = sorted(unreferenced - known.keys())
            rows = [{"key": key, "first_seen_at": started} for key in new]
            insert_ignoring_duplicates(session, BlobCandidate, rows)
    due = sorted(unreferenced - waiting - _referenced_since(runtime, started))
    if not dry_run:
        for chunk in in_batches(due):
            # Ownership goes first: a crash in between leaves an unowned blob for the next run, never
            # an owned hash whose contents are gone.
            with transaction(runtime.sessions) as session:
                hashes = [key.removeprefix(BLOB_PREFIX) for key in chunk]
                session.execute(delete(OwnedBlob).where(OwnedBlob.sha256.in_(hashes)))
                _forget(session, chunk)
            for key in chunk:
                runtime.store.delete(key)
    report.deleted_blobs = due
    report.pending_blobs = len(waiting)


def _forget(session: Session, keys: Sequence[str]) -> None:
    for chunk in in_batches(keys):
        session.execute(delete(BlobCandidate).where(BlobCandidate.key.in_(chunk)))
