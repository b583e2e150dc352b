"""Make a deployment live (promote, roll back) and keep it from retention (pin)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from libra_deploy import releases
from libra_deploy.db import utcnow
from libra_deploy.steps.deploy import deployment_url
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import ErrorSchema, PinSchema, PromoteSchema, PromotionSchema, RollbackSchema

blp = Blueprint(
    "releases", __name__, description="Switch the live deployment and keep deployments from retention"
)


def _now() -> str:
    return utcnow().isoformat().replace("+00:00", "Z")


def _promotion_body(promotion: releases.Promotion) -> dict[str, Any]:
    project, deployment = promotion.project, promotion.deployment
    return {
        "success": True,
        "projectId": project.id,
        "deploymentId": deployment.id,
        "previousDeploymentId": promotion.previous_deployment_id,
        "url": project.production_deploy_url,
        "deploymentUrl": deployment_url(runtime().settings.public_url, project.id, deployment.id),
        "timestamp": _now(),
    }


@blp.route("/projects/<project_id>/promote")
class Promote(MethodView):
    @blp.arguments(PromoteSchema)
    @blp.response(200, PromotionSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The body is invalid")
    @blp.alt_response(
        404, schema=ErrorSchema, description="No such project or deployment in your organisation"
    )
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The deployment is not completed, expired or of another project; "
        "or the project has a deployment queued or running",
    )
    def post(self, body: dict[str, Any], project_id: str) -> dict[str, Any]:
        """Make a completed deployment live

        A pointer switch: nothing is uploaded or built, and the site serves the deployment at once.
        """
        rt, session = runtime(), db()
        with session.begin():
            promotion = releases.promote(
                session, rt.settings, rt.target, principal(), project_id, body["deployment_id"]
            )
        return _promotion_body(promotion)


@blp.route("/projects/<project_id>/rollback")
class Rollback(MethodView):
    @blp.arguments(RollbackSchema)
    @blp.response(200, PromotionSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The body is invalid")
    @blp.alt_response(
        404, schema=ErrorSchema, description="No such project or deployment in your organisation"
    )
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="Nothing to roll back to, or the deployment is not an earlier completed one of the "
        "project, or the project has a deployment queued or running",
    )
    def post(self, body: dict[str, Any], project_id: str) -> dict[str, Any]:
        """Make an earlier deployment live again

        Without deploymentId, the newest completed deployment older than the live one. Like promote,
        nothing is uploaded or built.
        """
        rt, session = runtime(), db()
        with session.begin():
            promotion = releases.rollback(
                session, rt.settings, rt.target, principal(), project_id, body.get("deployment_id")
            )
        return _promotion_body(promotion)


@blp.route("/deployments/<deployment_id>/pin")
class Pin(MethodView):
    @blp.response(200, PinSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    @blp.alt_response(409, schema=ErrorSchema, description="The deployment has expired")
    def put(self, deployment_id: str) -> dict[str, Any]:
        """Pin a deployment: retention keeps it whatever its age"""
        return self._set(deployment_id, True)

    @blp.response(200, PinSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    def delete(self, deployment_id: str) -> dict[str, Any]:
        """Unpin a deployment: retention treats it like any other"""
        return self._set(deployment_id, False)

    def _set(self, deployment_id: str, pinned: bool) -> dict[str, Any]:
        session = db()
        with session.begin():
            deployment = releases.set_pinned(session, principal(), deployment_id, pinned)
        return {
            "success": True,
            "deploymentId": deployment.id,
            "pinned": deployment.pinned,
            "timestamp": _now(),
        }
