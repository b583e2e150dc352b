"""Deployment history: a project's deployments newest first, one deployment in detail, redeploy.

The list is paged with an opaque cursor on (created_at, id), the order of the index
``ix_deployments_project_id_created_at`` (and of ``..._status_created_at`` when filtered by status):
a page starts strictly after the last row of the previous one, so deployments created while a client
pages through the history never shift or repeat what it sees.

Functions here flush but never commit: the caller owns the transaction.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from libra_deploy import accounts
from libra_deploy.auth import Principal
from libra_deploy.config import Settings
from libra_deploy.deployments import DeployRequest, get_deployment, start_deployment, status_body, view_of
from libra_deploy.errors import Conflict, InvalidInput
from libra_deploy.models import (
    Deployment,
    DeploymentLog,
    DeploymentStatus,
    Project,
    User,
    is_plausible_id,
)
from libra_deploy.ports import ObjectStore
from libra_deploy.steps.deploy import deployment_url

MAX_PAGE = 100


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def encode_cursor(deployment: Deployment) -> str:
    raw = json.dumps([deployment.created_at.isoformat(), deployment.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor of :func:`encode_cursor` holds; INVALID_CURSOR for anything else.

    A cursor comes back from the client, who may have written it: its id must be one an id could be
    (a NUL byte would reach the database, which refuses it), and its time one that exists in UTC
    (``9999-12-31T23:59-05:00`` does not).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, deployment_id = json.loads(raw)
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None or not isinstance(deployment_id, str) or not is_plausible_id(deployment_id):
            raise ValueError(cursor)
        when = when.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidInput(
            "cursor is not one this service gave out; use nextCursor of the previous page",
            code="INVALID_CURSOR",
            details={"field": "cursor"},
        ) from None
    return when, deployment_id


@dataclass(frozen=True)
class Page:
    deployments: list[Deployment]
    next_cursor: str | None


def list_deployments(
    session: Session,
    principal: Principal,
    project_id: str,
    *,
    status: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Page:
    """A page of the project's deployments, newest first."""
    project = accounts.get_project(session, principal.org_id, project_id)
    query = select(Deployment).where(Deployment.project_id == project.id)
    if status is not None:
        query = query.where(Deployment.status == status)
    if cursor:
        created_at, deployment_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Deployment.created_at < created_at,
                and_(Deployment.created_at == created_at, Deployment.id < deployment_id),
            )
        )
    limit = max(1, min(limit, MAX_PAGE))
    rows = list(
        session.scalars(query.order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1]) if more and rows else None)


def summary(settings: Settings, deployment: Deployment, production_id: str | None) -> dict[str, Any]:
    """One line of the history: what a deployment list shows, without steps or logs."""
    body: dict[str, Any] = {
        "deploymentId": deployment.id,
        "projectId": deployment.project_id,
        "status": deployment.status,
        "currentStep": deployment.current_step,
        "progress": deployment.progress,
        "isProduction": deployment.id == production_id,
        "userId": deployment.user_id,
        "createdAt": _iso(deployment.created_at),
        "startedAt": _iso(deployment.started_at),
        "finishedAt": _iso(deployment.finished_at),
        "pinned": deployment.pinned,
    }
    if deployment.error_code:
        body["errorCode"] = deployment.error_code
        body["error"] = deployment.error_message
    if deployment.url:
        body["url"] = deployment.url
    if deployment.status == DeploymentStatus.COMPLETED and deployment.expired_at is None:
        body["deploymentUrl"] = deployment_url(settings.public_url, deployment.project_id, deployment.id)
    if deployment.expired_at:
        body["expiredAt"] = _iso(deployment.expired_at)
    if deployment.custom_domain:
        body["customDomain"] = deployment.custom_domain
    redeploy_of = (deployment.request or {}).get("redeployOf")
    if redeploy_of:
        body["redeployOf"] = redeploy_of
    return body


def _tree(manifest: Mapping[str, Any] | None) -> dict[str, int] | None:
    if manifest is None:
        return None
    return {"fileCount": len(manifest), "bytes": sum(int(e["size"]) for e in manifest.values())}


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def detail(session: Session, settings: Settings, deployment: Deployment) -> dict[str, Any]:
    """The /deploy-status body, plus the source summary, durations per step and who started it."""
    body = status_body(settings, view_of(session, settings, deployment))
    project = session.get(Project, deployment.project_id)
    body.update(summary(settings, deployment, project.production_deployment_id if project else None))
    body["source"] = _tree(deployment.source_manifest)
    body["output"] = _tree(deployment.output_manifest)
    durations: dict[str, float | None] = {
        step.step: _seconds(step.started_at, step.finished_at) for step in deployment.steps
    }
    body["durations"] = {
        "queued": _seconds(deployment.created_at, deployment.started_at),
        "steps": durations,
        "total": _seconds(deployment.started_at or deployment.created_at, deployment.finished_at),
    }
    user = session.get(User, deployment.user_id) if deployment.user_id else None
    body["createdBy"] = {"userId": deployment.user_id, "email": user.email if user else None}
    return body


def redeploy(
    session: Session, settings: Settings, store: ObjectStore, principal: Principal, deployment_id: str
) -> Deployment:
    """A new deployment of the same project from the same source tree; nothing is uploaded again.

    The tree is named by hash (the blobs are in the object store already) and replaces the project's
    stored files, so the new deployment builds exactly what the old one built. The usual 409 applies
    while the project has a deployment queued or running; a tree whose blobs garbage collection
    removed is 400 MISSING_FILES, as for any deploy by hash.
    """
    original = get_deployment(session, principal.org_id, deployment_id)
    manifest = original.source_manifest
    if not manifest:
        raise Conflict(
            f"deployment {original.id} has no source tree (its sync step never completed); "
            "there is nothing to redeploy",
            code="NOTHING_TO_REDEPLOY",
        )
    request = DeployRequest(
        project_id=original.project_id,
        custom_domain=original.custom_domain,
        files=[{"path": path, "sha256": entry["sha256"]} for path, entry in manifest.items()],
        replace_files=True,
    )
    deployment = start_deployment(session, settings, store, principal, request)
    deployment.request = {**deployment.request, "redeployOf": original.id}
    session.add(
        DeploymentLog(
            deployment_id=deployment.id,
            message=f"Redeploy of {original.id} ({len(manifest)} files) by {principal.user_id}",
        )
    )
    session.flush()
    return deployment
