"""Published sites, served by the service itself: /sites/<projectId>/<path>. Public."""

from __future__ import annotations

from flask import redirect, request
from flask.views import MethodView
from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from libra_deploy import sites
from libra_deploy.errors import NotFound
from libra_deploy.models import is_plausible_id
from web.api import Blueprint
from web.context import runtime

blp = Blueprint("sites", __name__, url_prefix="/sites", description="Deployed sites (public)")

#: How the document describes a served file: public, any content type, the usual HTTP answers.
SITE_RESPONSES = {
    "security": [],
    "responses": {
        "200": {"description": "The file (any content type)", "content": {"*/*": {}}},
        "304": {"description": "Not modified since the ETag the client holds"},
        "308": {
            "description": "Redirect to the canonical path",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        "404": {
            "description": "No such site or file (the site's own 404 page when it has one)",
            "content": {"*/*": {}},
        },
    },
}


def _site_not_found(project_id: str) -> NotFound:
    return NotFound(f"no deployment of project {project_id} is live", code="SITE_NOT_FOUND")


def serve(project_id: str, path: str) -> Response:
    if not is_plausible_id(project_id):
        raise _site_not_found(project_id)
    target = runtime().target
    deployment_id = target.live_deployment(project_id)
    if deployment_id is None:
        raise NotFound(f"no deployment of project {project_id} is live", code="SITE_NOT_FOUND")
    answer = sites.resolve(target, project_id, deployment_id, path)
    if answer.location is not None:
        return redirect(f"{request.script_root}/sites/{project_id}/{answer.location}", code=answer.status)
    if answer.file is None:
        raise NotFound(f"/{path} is not part of the site", code="FILE_NOT_FOUND")
    etag = f'"{answer.file.sha256[:32]}"'
    headers = {
        "ETag": etag,
        "Cache-Control": sites.cache_control(answer.file.path),
        "X-Content-Type-Options": "nosniff",
    }
    if answer.status == 200 and request.if_none_match.contains(etag.strip('"')):
        return Response(status=304, headers=headers)
    body = wrap_file(request.environ, answer.file.open())
    response = Response(
        body,
        status=answer.status,
        mimetype=None,
        headers=headers,
        direct_passthrough=True,
        content_type=sites.content_type(answer.file.path),
    )
    response.content_length = answer.file.size
    return response


@blp.route("/<project_id>")
class SiteRoot(MethodView):
    @blp.doc(**SITE_RESPONSES)
    def get(self, project_id: str) -> Response:
        """Redirect to the site's root, with its trailing slash"""
        if not is_plausible_id(project_id):
            raise _site_not_found(project_id)
        return redirect(f"{request.script_root}/sites/{project_id}/", code=308)


@blp.route("/<project_id>/", defaults={"path": ""})
@blp.route("/<project_id>/<path:path>")
class SiteFile(MethodView):
    @blp.doc(**SITE_RESPONSES)
    def get(self, project_id: str, path: str) -> Response:
        """A file of the project's live deployment"""
        return serve(project_id, path)
