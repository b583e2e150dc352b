"""Projects of the caller's organisation."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from libra_deploy import accounts
from libra_deploy.models import Project
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import ErrorSchema, ProjectCreateSchema, ProjectSchema, ProjectUpdateSchema

blp = Blueprint("projects", __name__, url_prefix="/projects", description="Projects of your organisation")


@blp.route("")
class Projects(MethodView):
    @blp.arguments(ProjectCreateSchema)
    @blp.response(201, ProjectSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The body is invalid")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(409, schema=ErrorSchema, description="The custom domain belongs to another project")
    def post(self, body: dict[str, Any]) -> Project:
        """Create a project"""
        session = db()
        with session.begin():
            return accounts.create_project(
                session,
                principal().org_id,
                body["name"],
                template=body.get("template"),
                custom_domain=body.get("custom_domain"),
                spa_fallback=body["spa_fallback"],
                sandbox_provider=body.get("sandbox_provider"),
                settings=runtime().settings,
            )


@blp.route("/<project_id>")
class ProjectById(MethodView):
    @blp.response(200, ProjectSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    def get(self, project_id: str) -> Project:
        """Get a project, with its live deployment and URL"""
        return accounts.get_project(db(), principal().org_id, project_id)

    @blp.arguments(ProjectUpdateSchema)
    @blp.response(200, ProjectSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The body is invalid")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    def patch(self, body: dict[str, Any], project_id: str) -> Project:
        """Change a project's settings; the fields left out keep their values"""
        session = db()
        with session.begin():
            return accounts.update_project(
                session, principal().org_id, project_id, body, settings=runtime().settings
            )
