"""Every error the API answers, in one JSON shape, mapped from domain errors in one place.

``{"success": false, "error": CODE, "message": "...", "details": ..., "timestamp": "..."}``

Never a stack trace, never an HTML page: unexpected exceptions are logged and answered with a
generic 500; unknown routes and methods get the same shape as everything else.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from libra_deploy.db import utcnow
from libra_deploy.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    LibraError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)
from web.limits import retry_after

logger = logging.getLogger(__name__)

STATUS = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    Unprocessable: 422,
    TooManyRequests: 429,
    ServiceUnavailable: 503,
}

#: Codes for errors raised by Flask and webargs rather than by us.
HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": code, "message": message}
    if details is not None:
        body["details"] = details
    body["timestamp"] = utcnow().isoformat().replace("+00:00", "Z")
    return body


def _respond(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def handle_libra_error(error: LibraError) -> Response:
    status = next((s for cls, s in STATUS.items() if isinstance(error, cls)), 500)
    if status == 500 and error.retryable:
        # A provider the request needs (the object store, a bucket behind /sites/) is away for now.
        status = 503
    headers = {}
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(error.retry_after)
    if status == 500:
        logger.error("unexpected service error on %s %s: %s", request.method, request.path, error.message)
        return _respond(500, error_body("INTERNAL_ERROR", "The service failed to handle the request"))
    return _respond(status, error_body(error.code, error.message, error.details), headers)


def handle_rate_limit(error: RateLimitExceeded) -> Response:
    seconds = retry_after()
    body = error_body(
        "RATE_LIMITED",
        str(error.description),
        {"rate": str(error.limit.limit), "retryAfter": seconds},
    )
    return _respond(429, body, {"Retry-After": str(seconds)})


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    messages = data.get("errors") or data.get("messages")
    if messages is not None and status in (400, 422):
        # webargs/marshmallow validation: always 400 with the field errors (DESIGN.md section 5).
        return _respond(400, error_body("VALIDATION_ERROR", "Request validation failed", _unwrap(messages)))
    if isinstance(error, RequestEntityTooLarge):
        from flask import current_app

        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return _respond(
            413,
            error_body(
                "PAYLOAD_TOO_LARGE",
                f"the request body is larger than MAX_REQUEST_BYTES ({limit} bytes)",
                {"limit": "MAX_REQUEST_BYTES", "value": limit},
            ),
        )
    message = data.get("message") or error.description or error.name
    return _respond(
        status, error_body(HTTP_CODES.get(status, "HTTP_ERROR"), str(message)), data.get("headers")
    )


def _unwrap(messages: Any) -> Any:
    # webargs nests errors under their location ({"json": {...}}); clients care about the fields.
    if isinstance(messages, dict) and len(messages) == 1:
        (location,) = messages
        if location in ("json", "query", "headers", "view_args"):
            return messages[location]
    return messages


def handle_unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return _respond(500, error_body("INTERNAL_ERROR", "The service failed to handle the request"))


def register(app: Flask) -> None:
    app.register_error_handler(LibraError, handle_libra_error)
    app.register_error_handler(RateLimitExceeded, handle_rate_limit)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
