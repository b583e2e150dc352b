"""A project's deployment history, newest first."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from libra_deploy import accounts, history
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import DeploymentPageSchema, ErrorSchema, HistoryQuerySchema

blp = Blueprint("history", __name__, url_prefix="/projects", description="Deployment history of a project")


@blp.route("/<project_id>/deployments")
class ProjectDeployments(MethodView):
    @blp.arguments(HistoryQuerySchema, location="query")
    @blp.response(200, DeploymentPageSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="A query parameter or the cursor is invalid")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    def get(self, query: dict[str, Any], project_id: str) -> dict[str, Any]:
        """List a project's deployments

        Newest first, `limit` per page; pass `nextCursor` as `cursor` for the next page. Pages stay
        stable while new deployments are created.
        """
        session, caller = db(), principal()
        page = history.list_deployments(
            session,
            caller,
            project_id,
            status=query.get("status"),
            limit=query["limit"],
            cursor=query.get("cursor"),
        )
        live = accounts.get_project(session, caller.org_id, project_id).production_deployment_id
        settings = runtime().settings
        return {
            "deployments": [history.summary(settings, d, live) for d in page.deployments],
            "nextCursor": page.next_cursor,
        }
