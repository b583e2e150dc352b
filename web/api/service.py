"""Service information, health and the API reference: public."""

from __future__ import annotations

import time
from typing import Any

from flask import Response
from flask.views import MethodView
from sqlalchemy import text

from libra_deploy import __version__
from libra_deploy.db import utcnow
from tasks.pipeline import broker_reachable
from web.api import Blueprint
from web.context import runtime
from web.schemas import HealthSchema, ServiceInfoSchema

SERVICE = "Libra Deploy"
STARTED = time.monotonic()
blp = Blueprint("service", __name__, description="Service information and health (public)")

ENDPOINTS = [
    "POST /deploy",
    "GET /deploy-status?id=<deploymentId>",
    "POST /projects",
    "GET /projects/<projectId>",
    "PATCH /projects/<projectId>",
    "POST /projects/<projectId>/promote",
    "POST /projects/<projectId>/rollback",
    "PUT /deployments/<deploymentId>/pin",
    "DELETE /deployments/<deploymentId>/pin",
    "POST /projects/<projectId>/files/check",
    "PUT /projects/<projectId>/files/<sha256>",
    "GET /templates",
    "GET /orgs/<orgId>/quota",
    "GET /sites/<projectId>/<path>",
    "GET /sites/<projectId>@<deploymentId>/<path>",
    "GET /health",
    "GET /docs",
    "GET /openapi.json",
]


def _now() -> str:
    return utcnow().isoformat().replace("+00:00", "Z")


@blp.route("/")
class Index(MethodView):
    @blp.response(200, ServiceInfoSchema)
    @blp.doc(security=[])
    def get(self) -> dict[str, Any]:
        """Service information and the list of endpoints"""
        return {
            "message": f"{SERVICE} Service",
            "service": SERVICE,
            "version": __version__,
            "status": "running",
            "timestamp": _now(),
            "architecture": "queue-based",
            "description": "Deploys projects through a queue of six steps: "
            "validate, sync, sandbox, build, deploy, cleanup",
            "endpoints": ENDPOINTS,
            "docs": runtime().settings.public_url + "/docs",
        }


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="A dependency does not answer")
    @blp.doc(security=[])
    def get(self) -> tuple[dict[str, Any], int]:
        """Health of the service and of its database and broker (503 when either is down)"""
        checks = {"database": _database_check(), "queue": "healthy" if broker_reachable() else "unhealthy"}
        healthy = all(v == "healthy" for v in checks.values())
        # How builds are isolated ("bubblewrap", or "none" where it is missing): worth knowing, but
        # the service works either way, so it does not make the service unhealthy.
        checks["isolation"] = _isolation()
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": _now(),
            "service": SERVICE,
            "version": __version__,
            "uptime": int((time.monotonic() - STARTED) * 1000),
            "checks": checks,
        }
        return body, 200 if healthy else 503


def _isolation() -> str:
    provider = runtime().sandbox()
    return str(getattr(provider, "isolation", provider.name))


def _database_check() -> str:
    try:
        with runtime().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "healthy"
    except Exception:
        return "unhealthy"


SCALAR_PAGE = """<!doctype html>
<html>
  <head>
    <title>Libra Deploy API</title>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" data-url="openapi.json"></script>
    <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
  </body>
</html>
"""


@blp.route("/docs")
class Docs(MethodView):
    @blp.doc(
        security=[], responses={"200": {"description": "The API reference", "content": {"text/html": {}}}}
    )
    def get(self) -> Response:
        """The API reference (Scalar), reading /openapi.json"""
        return Response(SCALAR_PAGE, mimetype="text/html")
