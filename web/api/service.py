"""Service information, health and the API reference: public."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import Response, send_file
from flask.views import MethodView
from sqlalchemy import text

from libra_deploy import __version__
from libra_deploy.db import utcnow
from libra_deploy.errors import NotFound
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
    "GET /deployments/<deploymentId>",
    "GET /deployments/<deploymentId>/logs[?follow=1]",
    "POST /deployments/<deploymentId>/cancel",
    "POST /deployments/<deploymentId>/redeploy",
    "GET /projects/<projectId>/deployments",
    "POST /projects/<projectId>/webhooks",
    "GET /projects/<projectId>/webhooks",
    "DELETE /projects/<projectId>/webhooks/<webhookId>",
    "GET /projects/<projectId>/webhooks/<webhookId>/deliveries",
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
    "GET /metrics",
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
            "limits": _limits(),
        }


def _limits() -> dict[str, int]:
    """The input limits of POST /deploy, so that a client (the CLI) can refuse early and clearly."""
    settings = runtime().settings
    return {
        "maxFiles": settings.max_files,
        "maxFileBytes": settings.max_file_bytes,
        "maxTotalBytes": settings.max_total_bytes,
        "maxPathLength": settings.max_path_length,
        "maxPathDepth": settings.max_path_depth,
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


#: The Scalar bundle `bin/setup` installs from the npm registry (not committed; see .gitignore).
SCALAR_BUNDLE = (
    Path(__file__).resolve().parents[1]
    / "vendor/node_modules/@scalar/api-reference/dist/browser/standalone.js"
)
#: Used only when the bundle is not installed (the page then needs the internet).
SCALAR_CDN = "https://cdn.jsdelivr.net/npm/@scalar/api-reference@1.76.0"

SCALAR_PAGE = """<!doctype html>
<html>
  <head>
    <title>Libra Deploy API</title>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" data-url="openapi.json" data-configuration='{"withDefaultFonts": false,
      "hideClientButton": true, "defaultOpenAllTags": true}'></script>
    <script src="%s"></script>
  </body>
</html>
"""


@blp.route("/docs")
class Docs(MethodView):
    @blp.doc(
        security=[],
        responses={
            "200": {
                "description": "The API reference",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    )
    def get(self) -> Response:
        """The API reference (Scalar), reading /openapi.json

        Served from the bundle installed by `bin/setup`, so it works without the internet; from the
        public CDN only when the bundle is missing.
        """
        source = "docs/scalar.js" if SCALAR_BUNDLE.is_file() else SCALAR_CDN
        return Response(SCALAR_PAGE % source, mimetype="text/html")


@blp.route("/docs/scalar.js")
class DocsBundle(MethodView):
    @blp.doc(
        responses={
            "200": {
                "description": "The Scalar API reference bundle",
                "content": {"text/javascript": {"schema": {"type": "string"}}},
            },
            "404": {"description": "The bundle is not installed (run bin/setup)"},
        }
    )
    def get(self) -> Response:
        """The Scalar bundle of the API reference"""
        if not SCALAR_BUNDLE.is_file():
            raise NotFound("the Scalar bundle is not installed; run bin/setup", code="DOCS_BUNDLE_MISSING")
        return send_file(SCALAR_BUNDLE, mimetype="text/javascript", max_age=3600)
