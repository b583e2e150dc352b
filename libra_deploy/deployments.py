"""Deployment use cases called by the API: start one, and describe one.

Functions here flush but never commit: the caller owns the transaction, and enqueues the pipeline
only after its commit (so a worker can never pick up a deployment that is not in the database yet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import ColumnElement, bindparam, cast, insert, null, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from libra_deploy import accounts, domains, quota, uploads, webhooks
from libra_deploy.auth import TOKEN_COLUMNS, Principal, hash_token, principal_of_token
from libra_deploy.config import Settings
from libra_deploy.db import table_of, utcnow
from libra_deploy.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from libra_deploy.models import (
    ApiToken,
    Deployment,
    DeploymentLog,
    DeploymentStatus,
    DeploymentStep,
    Project,
    ProjectStatus,
    StepStatus,
    is_plausible_id,
)
from libra_deploy.ports import ObjectStore, PresignedDownloads
from libra_deploy.redact import redact_text
from libra_deploy.sources import IncomingFile, RequestPaths, blob_key, check_tree, decode_init_files
from libra_deploy.steps import STEPS
from libra_deploy.steps.cleanup import log_key
from libra_deploy.steps.deploy import deployment_url

#: How long a presigned log or artifact URL in a status body stays valid.
DOWNLOAD_URL_TTL_S = 3600


@dataclass(frozen=True)
class DeployRequest:
    """POST /deploy after schema validation (shapes and types are already right)."""

    project_id: str
    org_id: str | None = None
    user_id: str | None = None
    custom_domain: str | None = None
    init_files: Sequence[Mapping[str, Any]] = ()
    #: Files named by hash, uploaded before (see :mod:`libra_deploy.uploads`): [{path, sha256}].
    files: Sequence[Mapping[str, Any]] = ()
    replace_files: bool = False
    history_messages: Sequence[Mapping[str, Any]] = ()


def check_history(messages: Sequence[Mapping[str, Any]], settings: Settings) -> list[dict[str, str]]:
    if len(messages) > settings.max_history_messages:
        raise PayloadTooLarge(
            f"historyMessages holds {len(messages)} messages; the limit MAX_HISTORY_MESSAGES is "
            f"{settings.max_history_messages}",
            details={"limit": "MAX_HISTORY_MESSAGES", "value": settings.max_history_messages},
        )
    checked = []
    for index, message in enumerate(messages):
        content = str(message["content"])
        if len(content.encode()) > settings.max_history_message_bytes:
            raise PayloadTooLarge(
                f"historyMessages[{index}] is larger than MAX_HISTORY_MESSAGE_BYTES "
                f"({settings.max_history_message_bytes} bytes)",
                details={"limit": "MAX_HISTORY_MESSAGE_BYTES", "value": settings.max_history_message_bytes},
            )
        checked.append({"role": str(message["role"]), "content": content})
    return checked


# A new deployment's step rows and first log line are plain rows nobody reads back in the request:
# written through their tables, without the ORM's unit of work.
_NEW_STEPS = insert(table_of(DeploymentStep))
_NEW_LINE = insert(table_of(DeploymentLog))


def start_deployment(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    principal: Principal,
    request: DeployRequest,
    *,
    rate_limit: Callable[[], None] | None = None,
) -> Deployment:
    """Record a new queued deployment and store its uploaded files. The caller commits, then enqueues.

    The checks run in a fixed order, so that a request breaking two rules always gets the same
    answer: the input (400/413), ``rate_limit`` (the web layer's 429, counted only for well-formed
    requests), the project (404), the custom domain and the project's running deployment (409), the
    organisation's cap on active deployments (429), its quota (429). Nothing is written, neither a
    row nor a blob, for a refused request.
    """
    if request.org_id is not None and request.org_id != principal.org_id:
        raise Forbidden("orgId does not match the organisation of your credentials", code="ORG_MISMATCH")
    if request.user_id is not None and request.user_id != principal.user_id:
        raise Forbidden("userId does not match the user of your credentials", code="USER_MISMATCH")
    paths = RequestPaths()
    files = decode_init_files(request.init_files, settings, paths)
    history = check_history(request.history_messages, settings)
    domain = domains.normalize(request.custom_domain, settings) if request.custom_domain else None
    if rate_limit is not None:
        rate_limit()

    project = accounts.get_project(session, principal.org_id, request.project_id)
    if not project.is_active:
        raise InvalidInput(f"project {project.id} is not active", code="PROJECT_INACTIVE")
    if domain is not None:
        domains.ensure_available(session, domain, project_id=project.id)
    hashed = _hashed_files(session, settings, store, principal.org_id, request, files, paths)

    changes: dict[str, Any] = {
        f.path: None if f.data is None else {"sha256": f.sha256, "size": len(f.data)} for f in files
    }
    changes.update({f.path: {"sha256": f.sha256, "size": f.size} for f in hashed})
    deployment = Deployment(
        project_id=project.id,
        org_id=principal.org_id,
        user_id=principal.user_id,
        custom_domain=domain,
        request={"files": changes, "replaceFiles": request.replace_files},
        history_messages=history,
        # Published right after the commit; if that publish fails the caller clears this, and if
        # the process dies first the reaper publishes it after PICKUP_TIMEOUT.
        enqueued_at=utcnow(),
    )
    session.add(deployment)
    try:
        # The partial unique index on active deployments decides races between concurrent POSTs.
        session.flush()
    except IntegrityError:
        # The caller's transaction is rolled back as this error leaves it.
        raise deployment_in_progress(request.project_id) from None
    steps = [{"deployment_id": deployment.id, "step": step, "position": i} for i, step in enumerate(STEPS)]
    session.execute(_NEW_STEPS, steps)
    quota.admit(session, settings, deployment)
    project.deployment_status = ProjectStatus.PREPARING
    session.execute(_NEW_LINE, {"deployment_id": deployment.id, "message": "Deployment queued"})
    _store_blobs(store, files)
    uploaded = {f.sha256: len(f.data) for f in files if f.data is not None and f.sha256}
    uploads.grant(session, principal.org_id, uploaded)
    session.flush()
    return deployment


def _hashed_files(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    org_id: str,
    request: DeployRequest,
    inline: Sequence[IncomingFile],
    paths: RequestPaths,
) -> list[uploads.HashedFile]:
    """Check ``files`` (by hash), and the limits of the whole request with ``initFiles``."""
    if not request.files:
        return []
    if len(inline) + len(request.files) > settings.max_files:
        raise PayloadTooLarge(
            f"initFiles and files hold {len(inline) + len(request.files)} files; "
            f"the limit MAX_FILES is {settings.max_files}",
            details={"limit": "MAX_FILES", "value": settings.max_files},
        )
    hashed = uploads.resolve_files(session, store, settings, org_id, request.files, paths)
    total = sum(len(f.data) for f in inline if f.data is not None) + sum(f.size for f in hashed)
    if total > settings.max_total_bytes:
        raise PayloadTooLarge(
            f"initFiles and files add up to more than MAX_TOTAL_BYTES ({settings.max_total_bytes} bytes)",
            details={"limit": "MAX_TOTAL_BYTES", "value": settings.max_total_bytes},
        )
    check_tree([*(f.path for f in inline if f.data is not None), *(f.path for f in hashed)])
    return hashed


def deployment_in_progress(project_id: str) -> Conflict:
    return Conflict(
        "Cannot start new deployment. Project has a deployment queued or running; "
        "wait for it to complete or cancel it.",
        code="DEPLOYMENT_IN_PROGRESS",
        details={"projectId": project_id},
    )


def _store_blobs(store: ObjectStore, files: Sequence[IncomingFile]) -> None:
    blobs = {f.sha256: f.data for f in files if f.data is not None and f.sha256}
    for key in store.missing(blob_key(sha) for sha in blobs):
        sha = key.removeprefix("blobs/")
        store.put(key, blobs[sha])


@dataclass(frozen=True)
class StepState:
    """One step as a status body shows it."""

    step: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: str | None


@dataclass(frozen=True)
class StatusView:
    """What a status body shows of a deployment, as plain values.

    GET /deploy-status reads it as rows (:func:`deployment_status`): a client polls it every second
    or so, and building ORM entities with their identity map cost more than the SQL. Views that
    already hold a :class:`Deployment` take :func:`view_of` it.
    """

    id: str
    org_id: str
    project_id: str
    status: str
    current_step: str | None
    progress: int
    error_code: str | None
    error_message: str | None
    custom_domain: str | None
    url: str | None
    target_url: str | None
    artifact_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pinned: bool
    expired_at: datetime | None
    build_variables: dict[str, int] | None
    steps: tuple[StepState, ...]
    #: The newest STATUS_LOG_LINES log lines, oldest first.
    newest_lines: tuple[str, ...]


_DEPLOYMENT_FIELDS = tuple(f.name for f in fields(StatusView) if f.name not in ("steps", "newest_lines"))
_STEP_FIELDS = tuple(f.name for f in fields(StepState))
_deployments, _steps, _logs = Deployment.__table__.c, DeploymentStep.__table__.c, DeploymentLog.__table__.c
_NEWEST_LINES = (
    select(_logs.id, _logs.message)
    .where(_logs.deployment_id == bindparam("deployment_id"))
    .order_by(_logs.id.desc())
    .limit(bindparam("lines"))
)
_newest = _NEWEST_LINES.subquery()


def _nulls(*columns: ColumnElement[Any], prefix: str = "") -> list[ColumnElement[Any]]:
    """NULLs of the types of ``columns``, for a branch of a union that has no such values. Typed
    (CAST), since PostgreSQL resolves a union's column types branch by branch, and two untyped NULLs
    make a text column that a later branch's timestamps cannot join."""
    return [cast(null(), column.type).label(f"{prefix}{column.key}") for column in columns]


#: What GET /deploy-status reads, in one round trip (a client polls it every second or so): the
#: deployment joined to its steps, its newest log lines, and the caller's API token when its view
#: resolves one (``token_hash``; no row for NULL), as rows of one shape (UNION ALL; the columns a row
#: does not fill are NULL). On the tables, so no ORM entity is built, and built once, so that a
#: status read neither constructs nor compiles a statement.
_STATUS_QUERY = union_all(
    select(
        *(_deployments[name] for name in _DEPLOYMENT_FIELDS),
        *(_steps[name].label(f"step_{name}") for name in _STEP_FIELDS),
        _steps.position.label("step_position"),
        *_nulls(_newest.c.id, _newest.c.message, prefix="log_"),
        *_nulls(*TOKEN_COLUMNS, prefix="token_"),
    )
    .select_from(Deployment.__table__)
    .outerjoin(DeploymentStep.__table__, _steps.deployment_id == _deployments.id)
    .where(_deployments.id == bindparam("deployment_id")),
    select(
        *_nulls(*(_deployments[name] for name in _DEPLOYMENT_FIELDS)),
        *_nulls(*(_steps[name] for name in _STEP_FIELDS), _steps.position, prefix="step_"),
        _newest.c.id,
        _newest.c.message,
        *_nulls(*TOKEN_COLUMNS, prefix="token_"),
    ),
    select(
        *_nulls(*(_deployments[name] for name in _DEPLOYMENT_FIELDS)),
        *_nulls(*(_steps[name] for name in _STEP_FIELDS), _steps.position, prefix="step_"),
        *_nulls(_newest.c.id, _newest.c.message, prefix="log_"),
        *(column.label(f"token_{column.key}") for column in TOKEN_COLUMNS),
    ).where(ApiToken.__table__.c.token_hash == bindparam("token_hash")),
)


#: Where each value sits in a row of _STATUS_QUERY: read by position, a row is a plain tuple, where a
#: lookup by name goes through the result's keys for every value (27 rows of 32 columns a poll).
_AT = {column.key: i for i, column in enumerate(_STATUS_QUERY.selected_columns)}
_DEPLOYMENT_AT = tuple(_AT[name] for name in _DEPLOYMENT_FIELDS)
_STEP_AT = tuple(_AT[f"step_{name}"] for name in _STEP_FIELDS)
_STEP_NAME, _STEP_POSITION = _AT["step_step"], _AT["step_position"]
_LOG_ID, _LOG_MESSAGE = _AT["log_id"], _AT["log_message"]
_TOKEN_AT = slice(_AT["token_id"], _AT["token_id"] + len(TOKEN_COLUMNS))


def _read_status(
    session: Session, deployment_id: str | None, lines: int, token_hash: str | None
) -> tuple[StatusView | None, Sequence[Any] | None]:
    """The deployment's view (None when there is no such deployment, or no ``deployment_id``) and,
    when ``token_hash`` is given, that token's row (:data:`auth.TOKEN_COLUMNS`; None when there is
    no such token)."""
    rows = session.execute(
        _STATUS_QUERY, {"deployment_id": deployment_id, "lines": lines, "token_hash": token_hash}
    ).all()
    token = next((row[_TOKEN_AT] for row in rows if row[_TOKEN_AT.start] is not None), None)
    joined = [row for row in rows if row[_LOG_ID] is None and row[_TOKEN_AT.start] is None]
    if not joined:
        return None, token
    # A deployment without step rows still has its one joined row, whose step columns are NULL.
    steps = sorted((row for row in joined if row[_STEP_NAME] is not None), key=itemgetter(_STEP_POSITION))
    logged = sorted((row for row in rows if row[_LOG_ID] is not None), key=itemgetter(_LOG_ID))
    deployment = joined[0]
    view = StatusView(
        **dict(zip(_DEPLOYMENT_FIELDS, (deployment[i] for i in _DEPLOYMENT_AT), strict=True)),
        steps=tuple(StepState(*(row[i] for i in _STEP_AT)) for row in steps),
        newest_lines=tuple(row[_LOG_MESSAGE] for row in logged),
    )
    return view, token


def view_of(session: Session, settings: Settings, deployment: Deployment) -> StatusView:
    """The StatusView of a deployment already loaded; its newest log lines are read here."""
    newest = session.execute(
        _NEWEST_LINES, {"deployment_id": deployment.id, "lines": settings.status_log_lines}
    ).all()
    return StatusView(
        **{name: getattr(deployment, name) for name in _DEPLOYMENT_FIELDS},
        steps=tuple(
            StepState(**{name: getattr(step, name) for name in _STEP_FIELDS}) for step in deployment.steps
        ),
        newest_lines=tuple(message for _id, message in reversed(newest)),
    )


def deployment_status(
    session: Session,
    settings: Settings,
    deployment_id: str,
    *,
    org_id: str | None,
    token: str | None = None,
    store: ObjectStore | None = None,
) -> dict[str, Any]:
    """The /deploy-status body of a deployment of the organisation ``org_id``.

    ``token`` is the caller's Bearer token when the caller has not resolved it (in place of
    ``org_id``): the statement that reads the status reads the token's row too, so that a poll is one
    round trip instead of two, and it is resolved (:func:`auth.principal_of_token`) before anything is
    shown: an invalid one is Unauthorized whatever the deployment, as everywhere else.

    Another organisation's deployment is 404, unless DEPLOY_STATUS_PUBLIC makes every status public:
    then a caller outside the organisation (or with no credentials, ``org_id`` None) gets the body
    with its logs and errors redacted.
    """
    token_hash = hash_token(token) if token is not None else None
    # An id that cannot be one never reaches the database (it may hold anything, a NUL byte
    # included): the statement then looks for no deployment, only for the token, if any.
    lookup = deployment_id if is_plausible_id(deployment_id) else None
    view, token_row = (
        _read_status(session, lookup, settings.status_log_lines, token_hash)
        if lookup is not None or token_hash is not None
        else (None, None)
    )
    if token_hash is not None:
        org_id = principal_of_token(session, token_row).org_id
    if view is not None and org_id is not None and view.org_id == org_id:
        return status_body(settings, view, store)
    if view is not None and settings.deploy_status_public:
        return status_body(settings, view, public=True)
    raise NotFound(f"deployment {deployment_id} does not exist", code="DEPLOYMENT_NOT_FOUND")


def get_deployment(session: Session, org_id: str, deployment_id: str, *, lock: bool = False) -> Deployment:
    """The deployment, if it belongs to the organisation. Another organisation's deployment is 404."""
    deployment = (
        session.get(Deployment, deployment_id, with_for_update=lock)
        if is_plausible_id(deployment_id)
        else None
    )
    if deployment is None or deployment.org_id != org_id:
        raise NotFound(f"deployment {deployment_id} does not exist", code="DEPLOYMENT_NOT_FOUND")
    return deployment


@dataclass(frozen=True)
class Cancelled:
    deployment: Deployment
    #: False when the deployment had been cancelled before (the request changed nothing).
    changed: bool
    #: The broker message of the step that was running, to revoke.
    running_task_id: str | None = None


def cancel(session: Session, principal: Principal, deployment_id: str) -> Cancelled:
    """Cancel a queued or running deployment. A finished one cannot be cancelled (Conflict), nor one
    that is live or going live (Conflict): its deploy step has begun to switch the live site to it.

    A queued deployment never starts: its first step finds it cancelled. A running one is stopped
    by the worker running it, whose step monitor sees the cancel within a second and kills the
    sandbox's processes. The cancel and the deploy step's switch of the live site are decided under
    the deployment's row lock, taken here and by ``StepContext.begin_live_switch``: whichever comes
    first wins. The caller commits, then publishes the cleanup.
    """
    deployment = get_deployment(session, principal.org_id, deployment_id, lock=True)
    if deployment.status == DeploymentStatus.CANCELLED:
        return Cancelled(deployment, changed=False)
    if deployment.status in (DeploymentStatus.COMPLETED, DeploymentStatus.FAILED):
        raise Conflict(
            f"deployment {deployment.id} is {deployment.status}; only queued or running ones can be stopped",
            code="DEPLOYMENT_FINISHED",
        )
    if deployment.live_switch_at is not None or any(
        s.step == "deploy" and s.status == StepStatus.COMPLETED for s in deployment.steps
    ):
        # (A deploy step completed before live_switch_at existed has no mark: its state says it.)
        raise Conflict(
            f"deployment {deployment.id} is already live or going live: its deploy step has begun to"
            " switch the project's live site to it, so it can no longer be cancelled; it completes,"
            " and a rollback puts an earlier deployment back",
            code="DEPLOYMENT_LIVE",
        )
    now = utcnow()
    running = next((s for s in deployment.steps if s.status == StepStatus.IN_PROGRESS), None)
    deployment.status = DeploymentStatus.CANCELLED
    deployment.cancel_requested_at = deployment.finished_at = now
    deployment.error_code = "CANCELLED"
    deployment.error_message = "cancelled on request"
    quota.release(session, deployment.id)
    for step in deployment.steps:
        if step.status == StepStatus.PENDING and step.step != "cleanup":
            step.status = StepStatus.SKIPPED
    project = session.get(Project, deployment.project_id)
    if project is not None:
        # The cancelled deployment never touched the live site (its deploy step had not begun the
        # switch, and now never will): the project is as it was before.
        project.deployment_status = (
            ProjectStatus.DEPLOYED if project.production_deployment_id else ProjectStatus.IDLE
        )
    session.add(
        DeploymentLog(
            deployment_id=deployment.id,
            step=running.step if running else None,
            level="warning",
            message=f"Cancelled by {principal.user_id}",
        )
    )
    webhooks.record_event(session, deployment, "deployment.cancelled")
    session.flush()
    return Cancelled(deployment, changed=True, running_task_id=running.task_id if running else None)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def status_body(
    settings: Settings,
    deployment: StatusView,
    store: ObjectStore | None = None,
    *,
    public: bool = False,
) -> dict[str, Any]:
    """The seed's /deploy-status body, from the recorded steps and the newest log lines.

    When the object store can presign downloads (``OBJECT_STORE=s3``), a finished deployment also
    carries ``logUrl`` (its full log) and, when it was built, ``artifactUrl`` (the output, tarred).
    ``public`` is the body shown to someone outside the organisation (DEPLOY_STATUS_PUBLIC): every
    log line and error goes through the redactor once more, with the secrets known now.
    """
    steps: dict[str, dict[str, Any]] = {}
    for step in deployment.steps:
        entry: dict[str, Any] = {"status": step.status}
        stamp = step.finished_at or step.started_at
        if stamp:
            entry["timestamp"] = _iso(stamp)
        if step.attempts:
            entry["attempts"] = step.attempts
        if step.error:
            entry["error"] = step.error
        steps[step.step] = entry
    logs = list(deployment.newest_lines)
    if public:
        logs = [redact_text(line) for line in logs]
        for entry in steps.values():
            if "error" in entry:
                entry["error"] = redact_text(entry["error"])
    body: dict[str, Any] = {
        "deploymentId": deployment.id,
        "projectId": deployment.project_id,
        "status": deployment.status,
        "currentStep": deployment.current_step,
        "progress": deployment.progress,
        "steps": steps,
        "logs": logs,
        "createdAt": _iso(deployment.created_at),
        "startedAt": _iso(deployment.started_at),
        "finishedAt": _iso(deployment.finished_at),
        "timestamp": _iso(utcnow()),
    }
    if deployment.error_message:
        body["error"] = redact_text(deployment.error_message) if public else deployment.error_message
        body["errorCode"] = deployment.error_code
    if deployment.url:
        body["url"] = deployment.url
    if deployment.status == DeploymentStatus.COMPLETED and deployment.expired_at is None:
        body["deploymentUrl"] = deployment_url(settings.public_url, deployment.project_id, deployment.id)
    body["pinned"] = deployment.pinned
    if deployment.expired_at:
        body["expiredAt"] = _iso(deployment.expired_at)
    if deployment.custom_domain:
        body["customDomain"] = deployment.custom_domain
    if deployment.target_url:
        body["targetUrl"] = deployment.target_url
    if deployment.build_variables is not None:
        body["buildVariables"] = deployment.build_variables
    # An expired deployment's log and artifact left the store with it (retention).
    downloadable = deployment.finished_at is not None and deployment.expired_at is None
    if isinstance(store, PresignedDownloads) and downloadable:
        cleanup = next((s for s in deployment.steps if s.step == "cleanup"), None)
        if cleanup is not None and cleanup.status == StepStatus.COMPLETED:
            body["logUrl"] = store.presigned_url(log_key(deployment.id), expires_s=DOWNLOAD_URL_TTL_S)
        if deployment.artifact_key:
            body["artifactUrl"] = store.presigned_url(deployment.artifact_key, expires_s=DOWNLOAD_URL_TTL_S)
    return body
