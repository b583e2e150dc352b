"""Build environment variables of a project: set, delete, list by name. Values are never returned."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from libra_deploy import build_variables
from libra_deploy.models import ProjectVariable
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import ErrorSchema, VariableListSchema, VariableSchema, VariableValueSchema

blp = Blueprint(
    "variables",
    __name__,
    url_prefix="/projects",
    description="Build environment variables, encrypted at rest and passed only to the build",
)


@blp.route("/<project_id>/env")
class Variables(MethodView):
    @blp.response(200, VariableListSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    def get(self, project_id: str) -> dict[str, Any]:
        """List a project's build variables: names and versions, never values"""
        return {"variables": build_variables.list_variables(db(), principal().org_id, project_id)}


@blp.route("/<project_id>/env/<name>")
class VariableByName(MethodView):
    @blp.arguments(VariableValueSchema)
    @blp.response(200, VariableSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="The name or the value is invalid, or too many")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    @blp.alt_response(503, schema=ErrorSchema, description="The service has no ENCRYPTION_KEY")
    def put(self, body: dict[str, Any], project_id: str, name: str) -> ProjectVariable:
        """Set a build variable

        The value is stored encrypted and passed to the install and build commands of the next
        builds; it is masked in their logs and never returned by the API.
        """
        session = db()
        with session.begin():
            return build_variables.set_variable(
                session, runtime().settings, principal().org_id, project_id, name, body["value"]
            )

    @blp.response(204)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project or variable")
    def delete(self, project_id: str, name: str) -> None:
        """Delete a build variable; the next builds run without it"""
        session = db()
        with session.begin():
            build_variables.delete_variable(session, principal().org_id, project_id, name)
