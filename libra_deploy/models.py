"""The data model. The database is the source of truth for every deployment and its steps.

Ids are prefixed ULIDs (``dep_01J…``): unguessable, sortable by creation time, and obvious about
what they name when they turn up in a log line or a support ticket.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from ulid import ULID

from libra_deploy.db import Base, UTCDateTime, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


def new_id(prefix: str) -> str:
    return f"{prefix}_{str(ULID()).lower()}"


_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")


def is_plausible_id(value: str) -> bool:
    """Whether ``value`` could be an id at all. Client-given ids are checked before any query:
    a NUL byte or a megabyte of text is an answer of 404, not a database error."""
    return _ID.fullmatch(value) is not None


class DeploymentStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: The predicate of a deployment holding a sandbox slot (see slots.py), as the partial index has it.
SLOT_HELD = "slot_acquired_at IS NOT NULL AND slot_released_at IS NULL"

ACTIVE_STATUSES = (DeploymentStatus.QUEUED, DeploymentStatus.IN_PROGRESS)
FINISHED_STATUSES = (DeploymentStatus.COMPLETED, DeploymentStatus.FAILED, DeploymentStatus.CANCELLED)


class StepStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class ProjectStatus(StrEnum):
    """``projects.deployment_status``, kept for clients of the original service."""

    IDLE = "idle"
    PREPARING = "preparing"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    FAILED = "failed"


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("org"))
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(40), default="free")
    #: Deployments allowed per calendar month; NULL means the service default (DEFAULT_DEPLOY_QUOTA).
    deploy_quota: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("usr"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A Bearer token. Only its SHA-256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tok"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserSession(Base):
    """A browser session (the ``session`` cookie). Only the SHA-256 of the cookie's value is stored."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ses"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("prj"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(String(100))
    #: The sandbox provider this project builds with; NULL means SANDBOX_BUILDER_DEFAULT_PROVIDER.
    sandbox_provider: Mapped[str | None] = mapped_column(String(40))
    #: Normalised host name (IDNA ASCII, lower case). Unique across every organisation.
    custom_domain: Mapped[str | None] = mapped_column(String(253), unique=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    deployment_status: Mapped[str] = mapped_column(String(20), default=ProjectStatus.IDLE)
    production_deploy_url: Mapped[str | None] = mapped_column(String(2048))
    #: The deployment the site serves. Not a foreign key: deployments reference projects already,
    #: and retention may remove old deployment rows while the pointer moves on.
    production_deployment_id: Mapped[str | None] = mapped_column(String(40))
    #: The project's stored files: {path: {"sha256": hex, "size": bytes}}; blobs live in the object store.
    source_manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The number of paths in ``source_manifest``, kept beside it so that showing a project never
    #: parses the manifest. Both are written together, by the sync step alone.
    source_file_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Serve index.html (200) for a missing extension-less path when the site has no 404.html.
    spa_fallback: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Build settings (PATCH /projects/<id>); NULL means what the framework detection decides.
    #: Run through ``sh -c`` in the sandbox instead of the package manager's install.
    install_command: Mapped[str | None] = mapped_column(String(1000))
    #: Run through ``sh -c`` in the sandbox instead of the package.json build script.
    build_command: Mapped[str | None] = mapped_column(String(1000))
    #: Where the build leaves the site, relative to the root directory.
    output_directory: Mapped[str | None] = mapped_column(String(512))
    #: The subfolder of the source the build runs in (a monorepo's package).
    root_directory: Mapped[str | None] = mapped_column(String(512))
    #: The Node.js version the project asks for, passed to the sandbox as NODE_VERSION.
    node_version: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # At most one queued or running deployment per project. The database enforces it, so two
        # concurrent POSTs cannot both pass a check-then-insert race: the second INSERT fails.
        Index(
            "uq_deployments_active_project",
            "project_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'in_progress')"),
            sqlite_where=text("status IN ('queued', 'in_progress')"),
        ),
        Index("ix_deployments_project_id_created_at", "project_id", "created_at"),
        # History filtered by status (GET /projects/<id>/deployments?status=...), newest first.
        Index("ix_deployments_project_id_status_created_at", "project_id", "status", "created_at"),
        # The sandbox slots held right now, which slots.try_acquire counts before every sandbox
        # step: a handful of rows, found without reading every deployment ever made.
        Index(
            "ix_deployments_slot_held",
            "slot_acquired_at",
            postgresql_where=text(SLOT_HELD),
            sqlite_where=text(SLOT_HELD),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dep"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(20), default=DeploymentStatus.QUEUED, index=True)
    current_step: Mapped[str | None] = mapped_column(String(20))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    custom_domain: Mapped[str | None] = mapped_column(String(253))
    url: Mapped[str | None] = mapped_column(String(2048))
    #: The deployment's own immutable URL at the deploy target (Pages deployment URL, bucket prefix).
    target_url: Mapped[str | None] = mapped_column(String(2048))
    #: The tarred build output in the object store (built projects only).
    artifact_key: Mapped[str | None] = mapped_column(String(300))
    #: What the client asked for, minus file contents:
    #: {"files": {path: {"sha256", "size"} | None (delete)}, "replaceFiles": bool}.
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    history_messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: The assembled source tree (sync) and the build output (build): {path: {"sha256", "size"}}.
    source_manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    output_manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sandbox_provider: Mapped[str | None] = mapped_column(String(40))
    sandbox_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Refreshed while a worker runs a step; a stale heartbeat means the worker was lost.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the pipeline was last published to the broker; NULL while it waits for the outbox relay.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the deploy step, under this row's lock and finding no cancel, took the right to switch
    #: the project's live site to this deployment: from then on a cancel is refused and the
    #: deployment goes on to complete (StepContext.begin_live_switch, deployments.cancel).
    live_switch_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A sandbox slot (MAX_CONCURRENT_DEPLOYMENTS across all workers): asked for, held, given back.
    slot_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    slot_acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    slot_released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sandbox_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sandbox_destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Kept by retention whatever its age.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: When retention removed the deployment's files; the row stays as its record.
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The build variables the build ran with, {name: version}: names only, never values.
    build_variables: Mapped[dict[str, int] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    steps: Mapped[list[DeploymentStep]] = relationship(
        back_populates="deployment", order_by="DeploymentStep.position", cascade="all, delete-orphan"
    )


class DeploymentStep(Base):
    __tablename__ = "deployment_steps"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[str] = mapped_column(String(20), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=StepStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    #: The broker message running the step: its redelivery may take over, another message may not.
    task_id: Mapped[str | None] = mapped_column(String(64))

    deployment: Mapped[Deployment] = relationship(back_populates="steps")


class DeploymentLog(Base):
    """Short log lines per deployment: what /deploy-status shows and live logs stream."""

    __tablename__ = "deployment_logs"
    __table_args__ = (Index("ix_deployment_logs_deployment_id_id", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    step: Mapped[str | None] = mapped_column(String(20))
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuotaLedger(Base):
    """One row per (deployment, kind): a reservation, a consumption or a release happens once."""

    __tablename__ = "quota_ledger"
    __table_args__ = (
        UniqueConstraint("deployment_id", "kind"),
        Index("ix_quota_ledger_org_period", "org_id", "period"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    #: reserve | consume | release
    kind: Mapped[str] = mapped_column(String(10))
    #: The calendar month the unit counts against, "YYYY-MM" (UTC).
    period: Mapped[str] = mapped_column(String(7))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeadLetter(Base):
    """A record of every message sent to the dead-letter queue, and of its replays."""

    __tablename__ = "dead_letters"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dl"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(20))
    task_name: Mapped[str] = mapped_column(String(100))
    #: The JSON message as published to the dead-letter exchange.
    message: Mapped[dict[str, Any]] = mapped_column(JSON)
    error_type: Mapped[str] = mapped_column(String(100))
    error_message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When the message reached the broker; NULL while the outbox relay still has to publish it.
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OwnedBlob(Base):
    """Contents an organisation has uploaded, so that it may deploy them by hash alone.

    Blobs are shared by everyone (``blobs/<sha256>`` in the object store), but a hash is no
    proof of knowing the contents: an organisation may name in ``POST /deploy`` only the hashes
    it has uploaded itself, else it could publish another organisation's file by guessing or
    learning its hash.
    """

    __tablename__ = "owned_blobs"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BlobCandidate(Base):
    """A blob that nothing referenced when garbage collection last looked, and since when.

    A blob is deleted only once it has stayed unreferenced for GC_BLOB_GRACE: a running build
    stores its output before it records it, and a client uploads by hash before it deploys.
    """

    __tablename__ = "gc_blob_candidates"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` of POST /deploy: the same key and body within 24 h get the same deployment.

    The primary key (organisation, key) is what makes concurrent retries safe: the first INSERT wins
    and the others wait for its transaction, then find its row.
    """

    __tablename__ = "idempotency_keys"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: SHA-256 of the request body in canonical JSON: another body under the same key is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Webhook(Base):
    """A URL told when a project's deployments end; requests are signed with its secret."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whk"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    #: The signing key. The service must read it back to sign, so it cannot be hashed: it is stored
    #: encrypted under ENCRYPTION_KEY, sealed with the webhook's id (see ``webhooks``). A value that
    #: starts with ``whsec_`` was stored in plaintext before revision 0009 and is read as is until
    #: ``libra-deploy reencrypt`` encrypts it. Shown once at creation, never returned or logged.
    secret: Mapped[str] = mapped_column(Text)
    #: The event types delivered, e.g. ["deployment.completed", "deployment.failed"].
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: recorded with the change it reports, then sent until it succeeds.

    Recorded in the transaction that finishes the deployment (the outbox), published after the
    commit; ``published_at`` NULL means the outbox relay still has to publish it.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "deployment_id", "event"),
        Index("ix_webhook_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
        Index("ix_webhook_deliveries_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whd"))
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(40))
    #: The JSON body sent on every attempt (the signature's timestamp changes, the body does not).
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: pending | delivered | failed
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: While an attempt runs, no other copy of the message may send it (a lease, not a lock).
    attempt_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the next attempt is due; the reaper republishes a pending delivery long past it.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ProjectVariable(Base):
    """A build environment variable of a project, its value encrypted (Fernet, ENCRYPTION_KEY).

    The value is never returned by the API once set; ``version`` counts its changes, so that a
    deployment can record which value it was built with without recording the value.
    """

    __tablename__ = "project_variables"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    #: A Fernet token of {"project", "name", "value"}: a value copied to another row does not decrypt there.
    ciphertext: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
