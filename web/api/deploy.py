"""POST /deploy and GET /deploy-status: the original service's contract."""

from __future__ import annotations

import logging
from typing import Any

from flask import url_for
from flask.views import MethodView

from libra_deploy.db import utcnow
from libra_deploy.deployments import DeployRequest, deployment_status, start_deployment
from libra_deploy.recovery import mark_unpublished
from tasks.pipeline import start_deployment as enqueue
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import (
    DeployAcceptedSchema,
    DeploymentStatusSchema,
    DeployRequestSchema,
    ErrorSchema,
    StatusQuerySchema,
)

logger = logging.getLogger(__name__)
blp = Blueprint("deploy", __name__, description="Start deployments and follow them")


@blp.route("/deploy")
class Deploy(MethodView):
    @blp.arguments(DeployRequestSchema)
    @blp.response(202, DeployAcceptedSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The body is invalid (fields named in details)")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(403, schema=ErrorSchema, description="orgId or userId disagree with the credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    @blp.alt_response(409, schema=ErrorSchema, description="The project has a deployment queued or running")
    @blp.alt_response(413, schema=ErrorSchema, description="An input limit was exceeded (named in details)")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a deployment

        Answers at once with the deployment id; the six steps run in the background.
        """
        rt = runtime()
        session = db()
        with session.begin():
            deployment = start_deployment(session, rt.settings, rt.store, principal(), DeployRequest(**body))
        try:
            enqueue(deployment.id)
        except Exception:
            # The deployment is committed and stays queued; the outbox relay publishes it later.
            logger.warning("could not publish deployment %s; it stays queued", deployment.id, exc_info=True)
            with session.begin():
                mark_unpublished(session, [deployment.id])
        return {
            "success": True,
            "deploymentId": deployment.id,
            "status": deployment.status,
            "message": "Deployment queued successfully",
            "statusUrl": rt.settings.public_url + url_for("deploy.DeployStatus", id=deployment.id),
            "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
        }


@blp.route("/deploy-status")
class DeployStatus(MethodView):
    @blp.arguments(StatusQuerySchema, location="query")
    @blp.response(200, DeploymentStatusSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    def get(self, query: dict[str, str]) -> dict[str, Any]:
        """Follow a deployment: status, steps, progress, recent log lines and the site URL"""
        return deployment_status(db(), runtime().settings, principal().org_id, query["id"])
