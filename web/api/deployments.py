"""Deployments by id: details, logs (a page, or live as Server-Sent Events), cancel, redeploy."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, request
from flask.views import MethodView

from libra_deploy import history, logstream
from libra_deploy.deployments import cancel, get_deployment, status_body, view_of
from libra_deploy.errors import InvalidInput
from libra_deploy.models import FINISHED_STATUSES
from libra_deploy.recovery import mark_unpublished
from libra_deploy.runtime import Runtime
from tasks.pipeline import enqueue_cleanup, publish_webhooks, revoke
from tasks.pipeline import start_deployment as enqueue
from web.api import Blueprint
from web.api.deploy import accepted_body
from web.context import db, principal, runtime
from web.schemas import (
    MAX_LINE_ID,
    DeploymentDetailSchema,
    DeploymentStatusSchema,
    ErrorSchema,
    LogPageSchema,
    LogQuerySchema,
    RedeployAcceptedSchema,
)

logger = logging.getLogger(__name__)
blp = Blueprint("deployments", __name__, url_prefix="/deployments", description="Deployments by id")

#: A Last-Event-ID: ASCII digits, no more of them than MAX_LINE_ID has (19).
_LINE_ID = re.compile(rf"[0-9]{{1,{len(str(MAX_LINE_ID))}}}")

SSE_EXAMPLE = (
    "retry: 2000\n\n"
    'event: status\ndata: {"status": "in_progress", "currentStep": "build", "progress": 45, '
    '"steps": {...}}\n\n'
    'id: 1042\nevent: log\ndata: {"id": 1042, "step": "build", "level": "info", "message": "npm run build", '
    '"timestamp": "2026-11-28T10:30:04Z"}\n\n'
    ": keep-alive\n\n"
    'event: end\ndata: {"status": "completed", "url": "http://127.0.0.1:3008/sites/prj_01jd.../", ...}\n\n'
)


@blp.route("/<deployment_id>")
class DeploymentById(MethodView):
    @blp.response(200, DeploymentDetailSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    def get(self, deployment_id: str) -> dict[str, Any]:
        """Get a deployment in detail

        The /deploy-status body, plus the size of its source tree and build output, how long each
        step took, who started it, and whether it is the live one.
        """
        session = db()
        deployment = get_deployment(session, principal().org_id, deployment_id)
        return history.detail(session, runtime().settings, deployment)


@blp.route("/<deployment_id>/logs")
class Logs(MethodView):
    @blp.arguments(LogQuerySchema, location="query")
    @blp.response(200, LogPageSchema)
    @blp.doc(
        responses={
            "200": {
                "description": "The lines as JSON; with follow=1, a stream of Server-Sent Events",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/LogPage"}},
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": SSE_EXAMPLE,
                    },
                },
            }
        },
        parameters=[
            {
                "in": "header",
                "name": "Last-Event-ID",
                "required": False,
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_LINE_ID},
                "description": "Resume a stream after this line id (browsers send it when they reconnect)",
                "example": 1042,
            }
        ],
    )
    @blp.alt_response(400, schema=ErrorSchema, description="A query parameter is invalid")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    def get(self, query: dict[str, Any], deployment_id: str) -> Any:
        """Read a deployment's log, or follow it live

        Without `follow`: the lines after `cursor` as JSON (continue with `nextCursor`). With
        `follow=1` and `Accept: text/event-stream`: Server-Sent Events until the deployment ends,
        each line an event whose `id` is the line id, `status` events when a step moves on,
        keep-alive comments while nothing happens, and a final `end` event.
        """
        session = db()
        deployment = get_deployment(session, principal().org_id, deployment_id)
        after = query["cursor"]
        if query["follow"] or request.accept_mimetypes.best == "text/event-stream":
            after = max(after, _last_event_id())
            rt = runtime()
            session.close()  # the stream opens a short session per poll, never holds this one
            return Response(
                _event_stream(rt, deployment_id, after),
                mimetype="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        lines = logstream.lines_after(session, deployment.id, after, query["limit"])
        return {
            "deploymentId": deployment.id,
            "status": deployment.status,
            "lines": [line.as_dict() for line in lines],
            "nextCursor": lines[-1].id if lines else after,
            "finished": deployment.status in FINISHED_STATUSES,
        }


def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return 0
    # ASCII digits only (str.isdigit() takes "²", which int() refuses), and within the line ids'
    # 64-bit column, like the cursor: the database refuses a larger number.
    if not _LINE_ID.fullmatch(raw) or int(raw) > MAX_LINE_ID:
        raise InvalidInput(
            f"Last-Event-ID must be a line id (a number from 0 to {MAX_LINE_ID})",
            details={"header": "Last-Event-ID"},
        )
    return int(raw)


def _event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _event_stream(rt: Runtime, deployment_id: str, after: int) -> Iterator[str]:
    """Poll the database (a short session each time) and turn what is new into events."""
    settings = rt.settings
    tail = logstream.LogTail(deployment_id, after)
    yield "retry: 2000\n\n"
    reported: dict[str, Any] | None = None
    last_write = time.monotonic()
    while True:
        with rt.sessions() as session:
            state = logstream.progress(session, deployment_id)
            ended = state is None or state.ended
            lines = tail.poll(session, final=ended)
        chunks = [_event("log", line.as_dict(), line.id) for line in lines]
        if state is not None and state.as_dict() != reported:
            reported = state.as_dict()
            chunks.append(_event("status", reported))
        if ended:
            chunks.append(_event("end", reported or {"status": "gone"}))
        if chunks:
            yield "".join(chunks)
            last_write = time.monotonic()
        elif time.monotonic() - last_write >= settings.sse_keepalive_s:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        if ended:
            return
        time.sleep(settings.sse_poll_s)


@blp.route("/<deployment_id>/cancel")
class Cancel(MethodView):
    @blp.response(202, DeploymentStatusSchema)
    @blp.alt_response(200, schema=DeploymentStatusSchema, description="The deployment was cancelled before")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description=(
            "The deployment is completed or failed (DEPLOYMENT_FINISHED), or already live or going"
            " live: its deploy step has begun to switch the live site to it (DEPLOYMENT_LIVE)"
        ),
    )
    def post(self, deployment_id: str) -> tuple[dict[str, Any], int]:
        """Cancel a deployment

        A queued deployment never starts; a running one has its build stopped within seconds.
        The sandbox is then cleaned up. Once the deploy step has begun to switch the project's live
        site to the deployment, it can no longer be cancelled (409 DEPLOYMENT_LIVE): it completes,
        and a rollback puts an earlier deployment back. A cancel that comes first wins: the deploy
        step then leaves the live site as it was.
        """
        session = db()
        with session.begin():
            outcome = cancel(session, principal(), deployment_id)
        if outcome.changed:
            if outcome.running_task_id:
                revoke(outcome.running_task_id)
            try:
                enqueue_cleanup(deployment_id)
            except Exception:
                # The reaper runs the cleanup of a cancelled deployment whose cleanup never ran.
                logger.warning("could not publish the cleanup of %s", deployment_id, exc_info=True)
            try:
                publish_webhooks(runtime(), deployment_id)
            except Exception:
                # Recorded with the cancel: the outbox relay publishes them.
                logger.warning("could not publish the webhooks of %s", deployment_id, exc_info=True)
        with session.begin():
            settings = runtime().settings
            body = status_body(settings, view_of(session, settings, outcome.deployment))
        return body, 202 if outcome.changed else 200


@blp.route("/<deployment_id>/redeploy")
class Redeploy(MethodView):
    @blp.response(202, RedeployAcceptedSchema)
    @blp.alt_response(
        400, schema=ErrorSchema, description="Files of the source tree are gone (MISSING_FILES)"
    )
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="No such deployment in your organisation")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The project has a deployment queued or running, or this one never got a source tree",
    )
    def post(self, deployment_id: str) -> dict[str, Any]:
        """Deploy the same source again

        A new deployment of the same project from this deployment's source tree: nothing is
        uploaded again, and the build runs anew.
        """
        rt, session = runtime(), db()
        with session.begin():
            deployment = history.redeploy(session, rt.settings, rt.store, principal(), deployment_id)
        try:
            enqueue(deployment.id)
        except Exception:
            logger.warning("could not publish deployment %s; it stays queued", deployment.id, exc_info=True)
            with session.begin():
                mark_unpublished(session, [deployment.id])
        return {
            **accepted_body(deployment.id, deployment.status, "Redeploy queued"),
            "redeployOf": deployment_id,
        }
