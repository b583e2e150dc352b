"""The starter templates a project can be created from."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from libra_deploy import templates
from web.api import Blueprint
from web.schemas import ErrorSchema, TemplateListSchema

blp = Blueprint("templates", __name__, url_prefix="/templates", description="Starter templates")


@blp.route("")
class Templates(MethodView):
    @blp.response(200, TemplateListSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    def get(self) -> dict[str, Any]:
        """List the templates a project can start from (POST /projects with "template")"""
        return {
            "templates": [
                {
                    "id": template.id,
                    "title": template.title,
                    "description": template.description,
                    "framework": template.framework,
                    "files": list(templates.files(template.id)),
                }
                for template in templates.TEMPLATES.values()
            ]
        }
