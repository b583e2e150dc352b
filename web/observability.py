"""Request ids and request logs: every web log line names the request it belongs to.

The id is the client's ``X-Request-ID`` when it sends a sensible one (a proxy in front often does),
else a new one; it is echoed in the response's ``X-Request-ID`` and set on every log line written
while the request is handled (see :mod:`libra_deploy.logging_config`). One JSON line per request
records method, path, status and duration.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from libra_deploy.logging_config import request_id

logger = logging.getLogger("web.requests")
HEADER = "X-Request-ID"
_ACCEPTED = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def _begin() -> None:
    given = request.headers.get(HEADER, "")
    g.request_id = given if _ACCEPTED.match(given) else uuid.uuid4().hex
    g.request_id_token = request_id.set(g.request_id)
    g.request_started = time.monotonic()


def _finish(response: Response) -> Response:
    if "request_id" not in g:
        return response
    response.headers[HEADER] = g.request_id
    logger.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.monotonic() - g.request_started) * 1000, 1),
        },
    )
    return response


def _reset(_exc: BaseException | None = None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id.reset(token)


def init_app(app: Flask) -> None:
    # First in line: the id exists before authentication or anything else can log.
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    app.after_request(_finish)
    app.teardown_request(_reset)
