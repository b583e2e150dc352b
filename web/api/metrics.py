"""GET /metrics for Prometheus: public, unless METRICS_TOKEN is set.

The token check lives here rather than in web/auth.py: the metrics blueprint is listed among the
public ones there, and this view alone decides who may scrape.
"""

from __future__ import annotations

import hmac

from flask import Response, request
from flask.views import MethodView
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from libra_deploy.errors import Unauthorized
from libra_deploy.metrics import DatabaseCollector
from tasks.pipeline import queue_depths
from web.api import Blueprint
from web.context import runtime
from web.schemas import ErrorSchema

blp = Blueprint("metrics", __name__, description="Prometheus metrics (public unless METRICS_TOKEN is set)")

METRICS_EXAMPLE = (
    "# HELP libra_deployments Deployments by status\n# TYPE libra_deployments gauge\n"
    'libra_deployments{status="completed"} 42.0\n'
    'libra_queue_messages{queue="deployment-queue"} 0.0\n'
)


def _check_token(expected: str) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("metrics need Authorization: Bearer <METRICS_TOKEN>", code="UNAUTHORIZED")


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(
        security=[{}, {"metricsToken": []}],
        responses={
            "200": {
                "description": "Metrics in the Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}},
            }
        },
    )
    @blp.alt_response(401, schema=ErrorSchema, description="METRICS_TOKEN is set and was not given")
    def get(self) -> Response:
        """Metrics for Prometheus

        Deployments by status, step durations (histogram), retries, dead letters, queue depths and
        webhook deliveries, computed at scrape time from the database and the broker, so that every
        web process answers the same.
        """
        rt = runtime()
        if rt.settings.metrics_token:
            _check_token(rt.settings.metrics_token)
        queues = [rt.settings.deployment_queue, rt.settings.deployment_dlq, "deployment-webhooks"]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DatabaseCollector(rt.sessions, lambda: queue_depths(queues)))
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
