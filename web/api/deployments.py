"""Deployments by id: cancel."""

from __future__ import annotations

import logging
from typing import Any

from flask.views import MethodView

from libra_deploy.deployments import cancel, status_body
from tasks.pipeline import enqueue_cleanup, revoke
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import DeploymentStatusSchema, ErrorSchema

logger = logging.getLogger(__name__)
blp = Blueprint("deployments", __name__, url_prefix="/deployments", description="Deployments by id")


@blp.route("/<deployment_id>/cancel")
class Cancel(MethodView):
    @blp.response(202, DeploymentStatusSchema)
    @blp.alt_response(200, schema=DeploymentStatusSchema, description="The deployment was cancelled before")
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    @blp.alt_response(409, schema=ErrorSchema, description="The deployment is completed or failed")
    def post(self, deployment_id: str) -> tuple[dict[str, Any], int]:
        """Cancel a deployment

        A queued deployment never starts; a running one has its build stopped within seconds.
        The sandbox is then cleaned up.
        """
        session = db()
        with session.begin():
            outcome = cancel(session, principal(), deployment_id)
        if outcome.changed:
            if outcome.running_task_id:
                revoke(outcome.running_task_id)
            try:
                enqueue_cleanup(deployment_id)
            except Exception:
                # The reaper runs the cleanup of a cancelled deployment whose cleanup never ran.
                logger.warning("could not publish the cleanup of %s", deployment_id, exc_info=True)
        with session.begin():
            body = status_body(session, runtime().settings, outcome.deployment)
        return body, 202 if outcome.changed else 200
