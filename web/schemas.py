"""Marshmallow schemas: what the API accepts and answers, and what /openapi.json documents."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from libra_deploy.registry import SANDBOX_PROVIDERS
from libra_deploy.uploads import SHA256_PATTERN


class ErrorSchema(ma.Schema):
    success = fields.Boolean(metadata={"example": False})
    error = fields.String(metadata={"description": "A stable error code", "example": "PROJECT_NOT_FOUND"})
    message = fields.String(metadata={"description": "What went wrong, for people"})
    details = fields.Raw(metadata={"description": "Field errors or the limit that was hit"})
    timestamp = fields.String(metadata={"example": "2026-11-28T10:30:00Z"})


class InitFileSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    path = fields.String(required=True, metadata={"example": "index.html"})
    content = fields.String(metadata={"description": "The file's contents, as text or base64"})
    encoding = fields.String(
        load_default="utf-8", validate=validate.OneOf(["utf-8", "base64"]), metadata={"example": "utf-8"}
    )
    delete = fields.Boolean(load_default=False, metadata={"description": "Remove this stored file"})


class HistoryMessageSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    role = fields.String(required=True, validate=validate.OneOf(["user", "assistant"]))
    content = fields.String(required=True)


class HashedFileSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    path = fields.String(required=True, metadata={"example": "assets/app.js"})
    sha256 = fields.String(
        required=True,
        validate=validate.Regexp(SHA256_PATTERN, error="must be a SHA-256: 64 lower-case hexadecimal digits"),
        metadata={
            "description": "The file's SHA-256, uploaded before with PUT /projects/<id>/files/<sha256>",
            "example": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        },
    )


class DeployRequestSchema(ma.Schema):
    class Meta:
        # Clients of the original service send extra keys; they are ignored, as there.
        unknown = ma.EXCLUDE

    project_id = fields.String(
        data_key="projectId",
        required=True,
        validate=validate.Length(min=1, max=100),
        metadata={"example": "prj_01jd..."},
    )
    org_id = fields.String(
        data_key="orgId", metadata={"description": "Must match the credentials when given"}
    )
    user_id = fields.String(
        data_key="userId", metadata={"description": "Must match the credentials when given"}
    )
    custom_domain = fields.String(
        data_key="customDomain", allow_none=True, metadata={"example": "www.example.io"}
    )
    init_files = fields.List(fields.Nested(InitFileSchema), data_key="initFiles", load_default=list)
    files = fields.List(
        fields.Nested(HashedFileSchema),
        load_default=list,
        metadata={"description": "Files named by hash (uploaded before), besides or instead of initFiles"},
    )
    replace_files = fields.Boolean(
        data_key="replaceFiles",
        load_default=False,
        metadata={
            "description": "Make initFiles the whole tree instead of merging them over the stored files"
        },
    )
    history_messages = fields.List(
        fields.Nested(HistoryMessageSchema), data_key="historyMessages", load_default=list
    )


class DeployAcceptedSchema(ma.Schema):
    success = fields.Boolean(metadata={"example": True})
    deploymentId = fields.String(metadata={"example": "dep_01jdq3v5y8m6c0d2rj6x1b7k9t"})
    status = fields.String(metadata={"example": "queued"})
    message = fields.String(metadata={"example": "Deployment queued successfully"})
    statusUrl = fields.String(
        metadata={"example": "http://127.0.0.1:3008/deploy-status?id=dep_01jdq3v5y8m6c0d2rj6x1b7k9t"}
    )
    timestamp = fields.String()


class StatusQuerySchema(ma.Schema):
    id = fields.String(
        required=True, validate=validate.Length(min=1, max=100), metadata={"description": "Deployment id"}
    )


class StepStateSchema(ma.Schema):
    status = fields.String(
        validate=validate.OneOf(["pending", "in_progress", "completed", "failed", "skipped"]),
        metadata={"example": "completed"},
    )
    timestamp = fields.String()
    attempts = fields.Integer()
    error = fields.String()


class StepsSchema(ma.Schema):
    # "validate" is a method of Schema: the field is declared under another name and keyed by data_key.
    validate_ = fields.Nested(StepStateSchema, data_key="validate", attribute="validate")
    sync = fields.Nested(StepStateSchema)
    sandbox = fields.Nested(StepStateSchema)
    build = fields.Nested(StepStateSchema)
    deploy = fields.Nested(StepStateSchema)
    cleanup = fields.Nested(StepStateSchema)


class DeploymentStatusSchema(ma.Schema):
    deploymentId = fields.String()
    projectId = fields.String()
    status = fields.String(
        validate=validate.OneOf(["queued", "in_progress", "completed", "failed", "cancelled"]),
        metadata={"example": "in_progress"},
    )
    currentStep = fields.String(allow_none=True, metadata={"example": "build"})
    progress = fields.Integer(metadata={"example": 45})
    steps = fields.Nested(StepsSchema)
    logs = fields.List(fields.String())
    error = fields.String()
    errorCode = fields.String()
    url = fields.String(
        metadata={
            "description": "The project's live site",
            "example": "http://127.0.0.1:3008/sites/prj_01jd.../",
        }
    )
    deploymentUrl = fields.String(
        metadata={
            "description": "This deployment's own URL, for as long as retention keeps it (completed only)",
            "example": "http://127.0.0.1:3008/sites/prj_01jd...@dep_01jd.../",
        }
    )
    pinned = fields.Boolean(metadata={"description": "Kept by retention whatever its age"})
    expiredAt = fields.String(metadata={"description": "When retention removed its files"})
    customDomain = fields.String()
    targetUrl = fields.String(metadata={"description": "This deployment's own URL at the deploy target"})
    buildVariables = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "The build variables the build ran with: name -> version, never values"},
    )
    logUrl = fields.String(metadata={"description": "A time-limited download of the full log"})
    artifactUrl = fields.String(metadata={"description": "A time-limited download of the build output"})
    createdAt = fields.String(allow_none=True)
    startedAt = fields.String(allow_none=True)
    finishedAt = fields.String(allow_none=True)
    timestamp = fields.String()


SPA_FALLBACK = {
    "description": "Serve index.html (200) for a missing path without a file extension when the site "
    "has no 404.html, as single-page apps need",
    "example": True,
}


# Build settings: null or "" clears one (framework detection decides again).
INSTALL_COMMAND = {
    "description": "One line of shell run with sh -c in the sandbox instead of the package manager's "
    "install; it gets the build variables",
    "example": "npm ci --omit=optional",
}
BUILD_COMMAND = {
    "description": "One line of shell run with sh -c in the sandbox instead of the package.json build "
    "script; it gets the build variables",
    "example": "npm run build:site",
}
OUTPUT_DIRECTORY = {
    "description": "Where the build leaves the site, relative to rootDirectory; without a build, the "
    "folder of the source to serve",
    "example": "dist",
}
ROOT_DIRECTORY = {
    "description": "The folder of the source the build runs in (a package of a monorepo)",
    "example": "apps/web",
}
NODE_VERSION = {
    "description": "The Node.js version the build asks for, passed as NODE_VERSION (a hint: the "
    "sandbox's image decides)",
    "example": "20",
}


class ProjectCreateSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    name = fields.String(
        required=True, validate=validate.Length(min=1, max=200), metadata={"example": "my-site"}
    )
    template = fields.String(allow_none=True, metadata={"description": "A template id from GET /templates"})
    custom_domain = fields.String(data_key="customDomain", allow_none=True)
    spa_fallback = fields.Boolean(data_key="spaFallback", load_default=True, metadata=SPA_FALLBACK)
    sandbox_provider = fields.String(
        data_key="sandboxProvider",
        allow_none=True,
        validate=validate.OneOf(list(SANDBOX_PROVIDERS)),
        metadata={"description": "Where this project builds; omitted: the service's default"},
    )


class ProjectUpdateSchema(ma.Schema):
    """The project settings PATCH may change; a field left out keeps its value."""

    class Meta:
        unknown = ma.RAISE

    name = fields.String(validate=validate.Length(min=1, max=200))
    spa_fallback = fields.Boolean(data_key="spaFallback", metadata=SPA_FALLBACK)
    install_command = fields.String(data_key="installCommand", allow_none=True, metadata=INSTALL_COMMAND)
    build_command = fields.String(data_key="buildCommand", allow_none=True, metadata=BUILD_COMMAND)
    output_directory = fields.String(data_key="outputDirectory", allow_none=True, metadata=OUTPUT_DIRECTORY)
    root_directory = fields.String(data_key="rootDirectory", allow_none=True, metadata=ROOT_DIRECTORY)
    node_version = fields.String(data_key="nodeVersion", allow_none=True, metadata=NODE_VERSION)


class ProjectSchema(ma.Schema):
    id = fields.String()
    orgId = fields.String(attribute="org_id")
    name = fields.String()
    template = fields.String(allow_none=True)
    customDomain = fields.String(attribute="custom_domain", allow_none=True)
    sandboxProvider = fields.String(attribute="sandbox_provider", allow_none=True)
    isActive = fields.Boolean(attribute="is_active")
    deploymentStatus = fields.String(
        attribute="deployment_status",
        metadata={"description": "idle, preparing, deploying, deployed or failed"},
    )
    productionDeployUrl = fields.String(attribute="production_deploy_url", allow_none=True)
    productionDeploymentId = fields.String(attribute="production_deployment_id", allow_none=True)
    fileCount = fields.Integer(attribute="source_file_count")
    spaFallback = fields.Boolean(attribute="spa_fallback", metadata=SPA_FALLBACK)
    installCommand = fields.String(attribute="install_command", allow_none=True, metadata=INSTALL_COMMAND)
    buildCommand = fields.String(attribute="build_command", allow_none=True, metadata=BUILD_COMMAND)
    outputDirectory = fields.String(attribute="output_directory", allow_none=True, metadata=OUTPUT_DIRECTORY)
    rootDirectory = fields.String(attribute="root_directory", allow_none=True, metadata=ROOT_DIRECTORY)
    nodeVersion = fields.String(attribute="node_version", allow_none=True, metadata=NODE_VERSION)
    createdAt = fields.DateTime(attribute="created_at")
    updatedAt = fields.DateTime(attribute="updated_at")


class TemplateSchema(ma.Schema):
    id = fields.String(metadata={"example": "vite-react"})
    title = fields.String(metadata={"example": "Vite + React"})
    description = fields.String()
    framework = fields.String(metadata={"example": "vite"})
    files = fields.List(fields.String(), metadata={"description": "The files a project starts with"})


class TemplateListSchema(ma.Schema):
    templates = fields.List(fields.Nested(TemplateSchema))


class QuotaSchema(ma.Schema):
    orgId = fields.String(attribute="org_id")
    limit = fields.Integer(metadata={"description": "Deployments allowed in the period", "example": 1000})
    used = fields.Integer(metadata={"description": "Deployments that completed in the period"})
    reserved = fields.Integer(metadata={"description": "Deployments queued or running (reserved units)"})
    remaining = fields.Integer()
    period = fields.String(metadata={"description": "The calendar month (UTC)", "example": "2026-11"})
    periodStart = fields.DateTime(attribute="period_start")
    periodEnd = fields.DateTime(attribute="period_end", metadata={"description": "When the quota resets"})


class HealthSchema(ma.Schema):
    status = fields.String(validate=validate.OneOf(["healthy", "unhealthy"]))
    timestamp = fields.String()
    service = fields.String()
    version = fields.String()
    uptime = fields.Integer(metadata={"description": "Milliseconds since the process started"})
    checks = fields.Dict(keys=fields.String(), values=fields.String())


class ServiceInfoSchema(ma.Schema):
    message = fields.String()
    service = fields.String()
    version = fields.String()
    status = fields.String()
    timestamp = fields.String()
    architecture = fields.String()
    description = fields.String()
    endpoints = fields.List(fields.String())
    docs = fields.String()
    limits = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "Input limits of POST /deploy",
            "example": {"maxFiles": 10000, "maxFileBytes": 26214400, "maxTotalBytes": 104857600},
        },
    )


class PromoteSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    deployment_id = fields.String(
        data_key="deploymentId",
        required=True,
        validate=validate.Length(min=1, max=100),
        metadata={"description": "A completed deployment of the project", "example": "dep_01jdq3v5y8m6..."},
    )


class RollbackSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    deployment_id = fields.String(
        data_key="deploymentId",
        validate=validate.Length(min=1, max=100),
        metadata={
            "description": "A completed deployment older than the live one; by default the newest of those"
        },
    )


class PromotionSchema(ma.Schema):
    success = fields.Boolean(metadata={"example": True})
    projectId = fields.String()
    deploymentId = fields.String(metadata={"description": "The deployment that is live now"})
    previousDeploymentId = fields.String(
        allow_none=True, metadata={"description": "The deployment that was live before"}
    )
    url = fields.String(metadata={"description": "The project's live site"})
    deploymentUrl = fields.String(metadata={"description": "The live deployment's own URL"})
    timestamp = fields.String()


class PinSchema(ma.Schema):
    success = fields.Boolean(metadata={"example": True})
    deploymentId = fields.String()
    pinned = fields.Boolean()
    timestamp = fields.String()


class FilesCheckSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    hashes = fields.List(
        fields.String(
            validate=validate.Regexp(
                SHA256_PATTERN, error="must be a SHA-256: 64 lower-case hexadecimal digits"
            )
        ),
        required=True,
        metadata={"description": "SHA-256 of every file the client means to deploy"},
    )


class FilesMissingSchema(ma.Schema):
    missing = fields.List(
        fields.String(),
        metadata={"description": "The hashes to upload before deploying them, in request order"},
    )


class FileStoredSchema(ma.Schema):
    success = fields.Boolean(metadata={"example": True})
    sha256 = fields.String()
    size = fields.Integer(metadata={"description": "Bytes stored"})


# Issue 6: history, live logs, redeploy, idempotency, webhooks. ------------------------------------


class IdempotencyHeaderSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Length(min=1, max=255),
        metadata={
            "description": "Makes the request safe to retry: the same key and body within 24 hours "
            "answer with the deployment the first request created (same id, 202); the same key with "
            "another body is 422",
            "example": "9f1c2b7e-release-42",
        },
    )


DEPLOYMENT_STATUSES = ["queued", "in_progress", "completed", "failed", "cancelled"]


class HistoryQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    status = fields.String(
        validate=validate.OneOf(DEPLOYMENT_STATUSES),
        metadata={"description": "Only deployments with this status", "example": "completed"},
    )
    limit = fields.Integer(
        load_default=20,
        validate=validate.Range(min=1, max=100),
        metadata={"description": "Deployments per page (1 to 100)", "example": 20},
    )
    cursor = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "nextCursor of the previous page", "example": "WyIyMDI2LTExLTI4VDE3..."},
    )


class DeploymentSummarySchema(ma.Schema):
    deploymentId = fields.String(metadata={"example": "dep_01jdq3v5y8m6c0d2rj6x1b7k9t"})
    projectId = fields.String(metadata={"example": "prj_01jdq3v5y8m6c0d2rj6x1b7k9t"})
    status = fields.String(validate=validate.OneOf(DEPLOYMENT_STATUSES), metadata={"example": "completed"})
    currentStep = fields.String(allow_none=True, metadata={"example": None})
    progress = fields.Integer(metadata={"example": 100})
    isProduction = fields.Boolean(
        metadata={"description": "This deployment is the live one", "example": True}
    )
    userId = fields.String(allow_none=True, metadata={"description": "Who started it"})
    createdAt = fields.String(allow_none=True, metadata={"example": "2026-11-28T10:30:00Z"})
    startedAt = fields.String(allow_none=True)
    finishedAt = fields.String(allow_none=True)
    pinned = fields.Boolean()
    errorCode = fields.String(metadata={"example": "BUILD_FAILED"})
    error = fields.String(allow_none=True)
    url = fields.String(metadata={"example": "http://127.0.0.1:3008/sites/prj_01jd.../"})
    deploymentUrl = fields.String(
        metadata={"example": "http://127.0.0.1:3008/sites/prj_01jd...@dep_01jd.../"}
    )
    expiredAt = fields.String()
    customDomain = fields.String()
    redeployOf = fields.String(metadata={"description": "The deployment this one redeployed"})


class DeploymentPageSchema(ma.Schema):
    deployments = fields.List(fields.Nested(DeploymentSummarySchema))
    nextCursor = fields.String(
        allow_none=True,
        metadata={"description": "Pass as cursor for the next (older) page; null on the last page"},
    )


class TreeSummarySchema(ma.Schema):
    fileCount = fields.Integer(metadata={"example": 12})
    bytes = fields.Integer(metadata={"example": 48213})


class DurationsSchema(ma.Schema):
    queued = fields.Float(
        allow_none=True, metadata={"description": "Seconds between POST and the first step"}
    )
    steps = fields.Dict(
        keys=fields.String(),
        values=fields.Float(allow_none=True),
        metadata={"description": "Seconds per step (null until it ran)", "example": {"validate": 0.02}},
    )
    total = fields.Float(allow_none=True, metadata={"description": "Seconds from the first step to the end"})


class CreatedBySchema(ma.Schema):
    userId = fields.String(allow_none=True, metadata={"example": "usr_01jdq3v5y8m6c0d2rj6x1b7k9t"})
    email = fields.String(allow_none=True, metadata={"example": "dev@example.io"})


class DeploymentDetailSchema(DeploymentStatusSchema):
    isProduction = fields.Boolean()
    userId = fields.String(allow_none=True)
    redeployOf = fields.String()
    source = fields.Nested(TreeSummarySchema, allow_none=True, metadata={"description": "The source tree"})
    output = fields.Nested(TreeSummarySchema, allow_none=True, metadata={"description": "The build output"})
    durations = fields.Nested(DurationsSchema)
    createdBy = fields.Nested(CreatedBySchema)


#: The largest line id: log lines are numbered by a 64-bit column (BIGINT on PostgreSQL, INTEGER on
#: SQLite), and both databases refuse a larger number outright rather than find no line after it.
MAX_LINE_ID = 2**63 - 1


class LogQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    cursor = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_LINE_ID),
        metadata={"description": "Return the lines after this line id (nextCursor of the last answer)"},
    )
    limit = fields.Integer(
        load_default=1000,
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "Lines to return at most (1 to 1000)", "example": 1000},
    )
    follow = fields.Boolean(
        load_default=False,
        metadata={
            "description": "With Accept: text/event-stream, stream the lines as Server-Sent Events until "
            "the deployment ends (events `log` with `id:` = line id, `status`, and a final `end`); "
            "resume with the Last-Event-ID header"
        },
    )


class LogLineSchema(ma.Schema):
    id = fields.Integer(metadata={"description": "The line id, the cursor", "example": 1042})
    step = fields.String(allow_none=True, metadata={"example": "build"})
    level = fields.String(metadata={"example": "info"})
    message = fields.String(metadata={"example": "vite v5.4.0 building for production..."})
    timestamp = fields.String(metadata={"example": "2026-11-28T10:30:04Z"})


class LogPageSchema(ma.Schema):
    deploymentId = fields.String()
    status = fields.String(validate=validate.OneOf(DEPLOYMENT_STATUSES))
    lines = fields.List(fields.Nested(LogLineSchema))
    nextCursor = fields.Integer(metadata={"description": "The last line id returned (or the cursor given)"})
    finished = fields.Boolean(metadata={"description": "The deployment has ended: no more lines will come"})


class RedeployAcceptedSchema(DeployAcceptedSchema):
    redeployOf = fields.String(metadata={"example": "dep_01jdq3v5y8m6c0d2rj6x1b7k9t"})


WEBHOOK_EVENTS = ["deployment.completed", "deployment.failed", "deployment.cancelled"]


class WebhookCreateSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    url = fields.Url(
        required=True,
        schemes={"http", "https"},
        require_tld=False,
        metadata={"example": "https://hooks.example.io/libra"},
    )
    events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
        validate=validate.Length(min=1),
        metadata={"description": "The events to send (all three by default)", "example": WEBHOOK_EVENTS},
    )
    description = fields.String(load_default="", validate=validate.Length(max=200))


class WebhookSchema(ma.Schema):
    id = fields.String(metadata={"example": "whk_01jdq3v5y8m6c0d2rj6x1b7k9t"})
    projectId = fields.String()
    url = fields.String(metadata={"example": "https://hooks.example.io/libra"})
    events = fields.List(fields.String(), metadata={"example": WEBHOOK_EVENTS})
    description = fields.String()
    createdAt = fields.String()


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(
        metadata={
            "description": "The signing secret: shown only in this answer, store it now",
            "example": "whsec_Zt0v9q...",
        }
    )


class WebhookListSchema(ma.Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema))


class WebhookDeletedSchema(ma.Schema):
    success = fields.Boolean(metadata={"example": True})
    id = fields.String()
    timestamp = fields.String()


class DeliveriesQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    limit = fields.Integer(
        load_default=50,
        validate=validate.Range(min=1, max=100),
        metadata={"description": "Deliveries to return, newest first (1 to 100)", "example": 50},
    )


class DeliverySchema(ma.Schema):
    id = fields.String(metadata={"example": "whd_01jdq3v5y8m6c0d2rj6x1b7k9t"})
    webhookId = fields.String()
    deploymentId = fields.String()
    event = fields.String(
        validate=validate.OneOf(WEBHOOK_EVENTS), metadata={"example": "deployment.completed"}
    )
    status = fields.String(
        validate=validate.OneOf(["pending", "delivered", "failed"]), metadata={"example": "delivered"}
    )
    attempts = fields.Integer(metadata={"example": 1})
    lastStatusCode = fields.Integer(allow_none=True, metadata={"example": 200})
    lastError = fields.String(allow_none=True)
    createdAt = fields.String()
    deliveredAt = fields.String(allow_none=True)
    nextAttemptAt = fields.String(allow_none=True)
    payload = fields.Dict(metadata={"description": "The JSON body sent"})


class DeliveryListSchema(ma.Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema))


class VariableValueSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    value = fields.String(
        required=True,
        metadata={
            "description": "The value; stored encrypted and never shown again",
            "example": "https://api.example.io",
        },
    )


class VariableSchema(ma.Schema):
    """A build variable as the API shows it: its name, never its value."""

    name = fields.String(metadata={"example": "API_URL"})
    version = fields.Integer(metadata={"description": "How many times the value was set"})
    createdAt = fields.DateTime(attribute="created_at")
    updatedAt = fields.DateTime(attribute="updated_at")


class VariableListSchema(ma.Schema):
    variables = fields.List(fields.Nested(VariableSchema))
