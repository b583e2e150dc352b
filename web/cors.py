"""CORS (flask-cors): which browser origins may call the API with their credentials.

Allowed: any port of ``localhost`` and ``127.0.0.1`` (development servers), and the origins of
CORS_ORIGINS (by default ``https://zepid.dev`` and its one-level subdomains). An allowed origin is
echoed exactly, with ``Access-Control-Allow-Credentials: true``; any other origin gets no CORS
header at all, so the browser keeps the answer from the page.
"""

from __future__ import annotations

import re

from flask import Flask
from flask_cors import CORS

from libra_deploy.config import Settings

LOCALHOST = re.compile(r"\Ahttps?://(?:localhost|127\.0\.0\.1)(?::\d{1,5})?\Z", re.IGNORECASE)
#: One DNS label: what ``*`` stands for in ``https://*.zepid.dev``.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-Request-Id",
    "X-Requested-With",
]
EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Request-Id",
]


def origin_patterns(settings: Settings) -> list[re.Pattern[str]]:
    """Anchored patterns for every allowed origin (flask-cors matches a pattern from the start only)."""
    patterns = [LOCALHOST]
    for origin in settings.cors_origins:
        scheme, _, host = origin.partition("://")
        if host.startswith("*."):
            body = rf"{re.escape(scheme)}://{_LABEL}\.{re.escape(host[2:])}"
        else:
            body = re.escape(origin)
        patterns.append(re.compile(rf"\A{body}\Z", re.IGNORECASE))
    return patterns


def origin_allowed(origin: str, settings: Settings) -> bool:
    return any(pattern.match(origin) for pattern in origin_patterns(settings))


def init_app(app: Flask, settings: Settings) -> None:
    CORS(
        app,
        origins=origin_patterns(settings),
        supports_credentials=True,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        max_age=86400,
        vary_header=True,
    )
