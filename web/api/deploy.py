"""POST /deploy and GET /deploy-status: the original service's contract."""

from __future__ import annotations

import logging
from typing import Any

from flask import request, url_for
from flask.views import MethodView

from libra_deploy import idempotency
from libra_deploy.db import utcnow
from libra_deploy.deployments import DeployRequest, deployment_status, start_deployment
from libra_deploy.recovery import mark_unpublished
from tasks.pipeline import start_deployment as enqueue
from web.api import Blueprint
from web.context import db, maybe_principal, principal, read_db, runtime, unresolved_token
from web.limits import deploy_rate_limit
from web.schemas import (
    DeployAcceptedSchema,
    DeploymentStatusSchema,
    DeployRequestSchema,
    ErrorSchema,
    IdempotencyHeaderSchema,
    StatusQuerySchema,
)

logger = logging.getLogger(__name__)
blp = Blueprint("deploy", __name__, description="Start deployments and follow them")


@blp.route("/deploy")
class Deploy(MethodView):
    @blp.arguments(DeployRequestSchema)
    @blp.arguments(IdempotencyHeaderSchema, location="headers")
    @blp.response(202, DeployAcceptedSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The body is invalid (fields named in details)")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(403, schema=ErrorSchema, description="orgId or userId disagree with the credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    @blp.alt_response(409, schema=ErrorSchema, description="The project has a deployment queued or running")
    @blp.alt_response(413, schema=ErrorSchema, description="An input limit was exceeded (named in details)")
    @blp.alt_response(
        429,
        schema=ErrorSchema,
        description="A rate limit (RATE_LIMITED), the organisation's cap on active deployments "
        "(TOO_MANY_ACTIVE_DEPLOYMENTS) or its quota (DEPLOYMENT_QUOTA_EXCEEDED) is exhausted; "
        "Retry-After says when to try again",
        headers={"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    )
    @blp.alt_response(
        422, schema=ErrorSchema, description="The Idempotency-Key was used with another body in the last 24 h"
    )
    def post(self, body: dict[str, Any], headers: dict[str, Any]) -> Any:
        """Start a deployment

        Answers at once with the deployment id; the six steps run in the background. With an
        `Idempotency-Key` header, a retry of the same request (same key, same body, within 24 hours)
        answers with the deployment the first one created instead of starting another.
        """
        rt = runtime()
        session = db()
        key = headers.get("idempotency_key")
        with session.begin():
            caller = principal()
            if key is not None:
                claim = idempotency.claim(
                    session, caller.org_id, key, idempotency.request_hash(request.get_json(silent=True))
                )
                if claim.existing is not None:
                    return (
                        accepted_body(claim.existing.id, claim.existing.status),
                        202,
                        {"Idempotent-Replayed": "true"},
                    )
            deployment = start_deployment(
                session, rt.settings, rt.store, caller, DeployRequest(**body), rate_limit=deploy_rate_limit()
            )
            if key is not None:
                idempotency.bind(session, caller.org_id, claim.key, deployment)
        try:
            enqueue(deployment.id)
        except Exception:
            # The deployment is committed and stays queued; the outbox relay publishes it later.
            logger.warning("could not publish deployment %s; it stays queued", deployment.id, exc_info=True)
            with session.begin():
                mark_unpublished(session, [deployment.id])
        return accepted_body(deployment.id, deployment.status)


def accepted_body(
    deployment_id: str, status: str, message: str = "Deployment queued successfully"
) -> dict[str, Any]:
    """The 202 body of a deployment that was started (or, for a repeated request, found)."""
    return {
        "success": True,
        "deploymentId": deployment_id,
        "status": status,
        "message": message,
        "statusUrl": runtime().settings.public_url + url_for("deploy.DeployStatus", id=deployment_id),
        "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
    }


@blp.route("/deploy-status")
class DeployStatus(MethodView):
    @blp.arguments(StatusQuerySchema, location="query")
    @blp.response(200, DeploymentStatusSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The id is missing")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    def get(self, query: dict[str, str]) -> dict[str, Any]:
        """Follow a deployment: status, steps, progress, recent log lines and the site URL

        With DEPLOY_STATUS_PUBLIC set, anyone holding the id may read it; callers outside its
        organisation get its logs and errors redacted.
        """
        rt, session, caller = runtime(), read_db(), maybe_principal()
        body = deployment_status(
            session,
            rt.settings,
            query["id"],
            org_id=caller.org_id if caller else None,
            token=unresolved_token(),
            store=rt.store,
        )
        # The token's last-use stamp, when one was due (on PostgreSQL it is already committed).
        session.commit()
        return body
