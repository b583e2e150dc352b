"""Webhooks of a project: add, list, delete, and the deliveries of each."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from libra_deploy import webhooks
from libra_deploy.db import utcnow
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import (
    DeliveriesQuerySchema,
    DeliveryListSchema,
    ErrorSchema,
    WebhookCreatedSchema,
    WebhookCreateSchema,
    WebhookDeletedSchema,
    WebhookListSchema,
)

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/projects",
    description="Signed POSTs to your URLs when a deployment completes, fails or is cancelled",
)


@blp.route("/<project_id>/webhooks")
class Webhooks(MethodView):
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema)
    @blp.alt_response(
        400, schema=ErrorSchema, description="The URL is invalid, does not resolve, or is a private address"
    )
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    @blp.alt_response(503, schema=ErrorSchema, description="The service has no ENCRYPTION_KEY")
    def post(self, body: dict[str, Any], project_id: str) -> dict[str, Any]:
        """Add a webhook

        Answers with the signing secret, shown only this once. Each event is POSTed as JSON with
        `Libra-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
        """
        session = db()
        with session.begin():
            webhook, secret = webhooks.create(
                session,
                runtime().settings,
                principal(),
                project_id,
                body["url"],
                events=body.get("events"),
                description=body["description"],
            )
            shown = webhooks.describe_webhook(webhook)
        return {**shown, "secret": secret}

    @blp.response(200, WebhookListSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    def get(self, project_id: str) -> dict[str, Any]:
        """List a project's webhooks (without their secrets)"""
        found = webhooks.list_for_project(db(), principal(), project_id)
        return {"webhooks": [webhooks.describe_webhook(w) for w in found]}


@blp.route("/<project_id>/webhooks/<webhook_id>")
class WebhookById(MethodView):
    @blp.response(200, WebhookDeletedSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project or webhook")
    def delete(self, project_id: str, webhook_id: str) -> dict[str, Any]:
        """Delete a webhook and its deliveries"""
        session = db()
        with session.begin():
            webhooks.remove(session, principal(), project_id, webhook_id)
        return {"success": True, "id": webhook_id, "timestamp": utcnow().isoformat().replace("+00:00", "Z")}


@blp.route("/<project_id>/webhooks/<webhook_id>/deliveries")
class Deliveries(MethodView):
    @blp.arguments(DeliveriesQuerySchema, location="query")
    @blp.response(200, DeliveryListSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project or webhook")
    def get(self, query: dict[str, Any], project_id: str, webhook_id: str) -> dict[str, Any]:
        """List a webhook's deliveries, newest first: status, attempts, last answer"""
        found = webhooks.deliveries(db(), principal(), project_id, webhook_id, query["limit"])
        return {"deliveries": [webhooks.describe_delivery(d) for d in found]}
