"""Published sites, served by the service itself. Public, no credentials.

``/sites/<projectId>/<path>``
    the project's live deployment;
``/sites/<projectId>@<deploymentId>/<path>``
    one completed deployment, at its own URL for as long as retention keeps it;
any path on a project's custom domain
    the live deployment, when the request's Host is the domain attached to the project.

All three follow the same rules (:mod:`libra_deploy.sites`): the site's ``_redirects`` and
``_headers``, indexes, 404 pages and the single-page-app fallback. The first two are on the API's
own origin (on whatever host reaches the API), so every answer under ``/sites/`` there, errors and
redirects included, carries the sandbox of :func:`libra_deploy.sites.shared_origin_headers`; a
custom domain's answers, on an origin of their own, do not.
"""

from __future__ import annotations

import ipaddress
import threading
from urllib.parse import urlsplit

from cachetools import TTLCache
from flask import Flask, g, jsonify, redirect, request
from flask.views import MethodView
from werkzeug.datastructures import Headers
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from libra_deploy import accounts, domains, releases, sites
from libra_deploy.errors import NotFound
from libra_deploy.models import is_plausible_id
from web.api import Blueprint
from web.context import db, runtime
from web.errors import error_body

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


#: How long a process trusts what it learnt from the database about serving (a custom domain's
#: project, a deployment being servable): a domain attached elsewhere moves within this time.
LOOKUP_TTL_S = 10.0
_domains: TTLCache[str, str | None] = TTLCache(maxsize=4096, ttl=LOOKUP_TTL_S)
_servable: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=4096, ttl=LOOKUP_TTL_S)
_lock = threading.Lock()


def serve(project_id: str, deployment_id: str, path: str, mount: str) -> Response:
    """Answer ``path`` from a deployment; ``mount`` is where the site's root is on this host."""
    answer = sites.resolve(
        runtime().target,
        project_id,
        deployment_id,
        path,
        host=_hostname(request.host),
        query=request.query_string.decode("latin-1"),
        spa_fallback=lambda: accounts.spa_fallback_enabled(db(), project_id),
    )
    if answer.location is not None:
        # A path of the site is below the mount point; an absolute URL goes out as it is.
        location = mount + answer.location if answer.location.startswith("/") else answer.location
        response = redirect(location, code=answer.status)
    elif answer.file is None:
        response = jsonify(error_body("FILE_NOT_FOUND", f"/{path} is not part of the site"))
        response.status_code = 404
    else:
        return _file_response(answer)
    response.headers = Headers(answer.headers(response.headers.to_wsgi_list()))
    return response


def _file_response(answer: sites.SiteAnswer) -> Response:
    assert answer.file is not None
    headers = Headers(answer.headers(sites.file_headers(answer.file)))
    etag = sites.etag(answer.file)
    if answer.status == 200 and request.if_none_match.contains(etag.strip('"')):
        for name in ("Content-Type", "Content-Length"):
            headers.remove(name)
        return Response(status=304, headers=headers)
    body = wrap_file(request.environ, answer.file.open())
    response = Response(body, status=answer.status, headers=headers, direct_passthrough=True)
    response.content_length = answer.file.size
    return response


def _live(project_id: str) -> str:
    deployment_id = runtime().target.live_deployment(project_id)
    if deployment_id is None:
        raise NotFound(f"no deployment of project {project_id} is live", code="SITE_NOT_FOUND")
    return deployment_id


def _site(site: str) -> tuple[str, str]:
    """``prj_x`` (the live deployment) or ``prj_x@dep_y`` (that deployment) -> (project, deployment)."""
    project_id, _, deployment_id = site.partition("@")
    if not is_plausible_id(project_id) or (deployment_id and not is_plausible_id(deployment_id)):
        raise NotFound(f"there is no site {site!r}", code="SITE_NOT_FOUND")
    if not deployment_id:
        return project_id, _live(project_id)
    key = (project_id, deployment_id)
    with _lock:
        known = _servable.get(key)
    if not known:
        if not releases.is_servable(db(), project_id, deployment_id):
            raise NotFound(
                f"project {project_id} has no completed deployment {deployment_id} to serve",
                code="DEPLOYMENT_NOT_FOUND",
            )
        # Only a yes is remembered: a deployment that completes a moment later must serve at once.
        with _lock:
            _servable[key] = True
    return project_id, deployment_id


@blp.route("/<site>")
class SiteRoot(MethodView):
    @blp.doc(**SITE_RESPONSES)
    def get(self, site: str) -> Response:
        """Redirect to the site's root, with its trailing slash"""
        _site(site)  # only an existing site is redirected (and nothing odd reaches the header)
        return redirect(f"{request.script_root}/sites/{site}/", code=308)


@blp.route("/<site>/", defaults={"path": ""})
@blp.route("/<site>/<path:path>")
class SiteFile(MethodView):
    @blp.doc(**SITE_RESPONSES)
    def get(self, site: str, path: str) -> Response:
        """A file of the project's live deployment (`prj_x`) or of one deployment (`prj_x@dep_y`)"""
        project_id, deployment_id = _site(site)
        return serve(project_id, deployment_id, path, f"{request.script_root}/sites/{site}")


def _hostname(host: str) -> str:
    """A Host header's name: lower case, without its port (an IPv6 literal keeps its brackets)."""
    name = host if host.endswith("]") else host.rsplit(":", 1)[0]
    return name.rstrip(".").lower()


def _custom_domain_project(host: str) -> str | None:
    """The project whose custom domain the request is for, or None for the service's own hosts."""
    name = _hostname(host)
    if "." not in name or name == urlsplit(runtime().settings.public_url).hostname:
        return None
    try:
        ipaddress.ip_address(name.strip("[]"))
        return None
    except ValueError:
        pass
    with _lock:
        if name in _domains:
            return _domains[name]
    project_id = domains.project_for_host(db(), name)
    with _lock:
        _domains[name] = project_id
    return project_id


def serve_custom_domain() -> Response | None:
    """Serve the whole request from a project's live site when its Host is the project's domain."""
    project_id = _custom_domain_project(request.host)
    if project_id is None:
        return None
    g.custom_domain_project = project_id
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
    return serve(project_id, _live(project_id), request.path.lstrip("/"), request.script_root)


def sandbox_on_the_api_origin(response: Response) -> Response:
    """Give every answer under /sites/ on the API's origin the sandbox and the CORS answer of
    :func:`libra_deploy.sites.shared_origin_headers`: by path, not by blueprint, so that routing's
    own errors there have them too, and never on a custom domain, whose /sites/... is the site's."""
    if request.path.startswith("/sites/") and g.get("custom_domain_project") is None:
        response.headers = Headers(sites.shared_origin_headers(response.headers.to_wsgi_list()))
    return response


def init_app(app: Flask) -> None:
    # Before authentication: a custom domain's every path is its public site, never the API.
    app.before_request(serve_custom_domain)
    app.after_request(sandbox_on_the_api_origin)
