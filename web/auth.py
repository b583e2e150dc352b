"""Authentication: who is calling, and which endpoints anyone may call.

Credentials are a Bearer API token (``Authorization: Bearer ldt_...``) or a browser session (the
``session`` cookie). Public without credentials: ``/``, ``/health``, ``/docs``, ``/openapi.json``,
the served sites (the ``sites`` blueprint; a blueprint serving sites by Host header belongs in
:data:`PUBLIC_BLUEPRINTS` too), ``/metrics`` unless METRICS_TOKEN guards it, and ``/deploy-status``
when DEPLOY_STATUS_PUBLIC is set. Everything else needs credentials and shows only the caller's
organisation (another organisation's things are 404, never 403, so that ids cannot be probed).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, g, request
from sqlalchemy.orm import Session

from libra_deploy.auth import Principal, authenticate_session, authenticate_token
from libra_deploy.errors import Forbidden, Unauthorized
from web import cors
from web.context import read_db, runtime

#: Blueprints anyone may call: service information, health, the API documents, the served sites,
#: and the metrics (whose view checks METRICS_TOKEN itself when one is set: web/api/metrics.py).
PUBLIC_BLUEPRINTS = frozenset({"service", "api-docs", "sites", "metrics"})
#: Public when DEPLOY_STATUS_PUBLIC is set (the view then shows others a redacted status).
DEPLOY_STATUS_ENDPOINT = "deploy.DeployStatus"
SESSION_COOKIE = "session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate() -> None:
    g.principal = None
    if request.method == "OPTIONS" or request.endpoint is None:
        return
    if request.blueprint in PUBLIC_BLUEPRINTS:
        return
    g.principal = _principal()
    if g.principal is None:
        if request.endpoint == DEPLOY_STATUS_ENDPOINT and runtime().settings.deploy_status_public:
            return
        raise Unauthorized(
            "authentication required: send Authorization: Bearer <token> or a session cookie",
            code="UNAUTHORIZED",
        )


def _principal() -> Principal | None:
    """The caller named by the request's credentials; None when it carries none."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be: Bearer <token>", code="UNAUTHORIZED")
        return _resolved(lambda session: authenticate_token(session, token.strip()))
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        _refuse_cross_site_writes()
        return _resolved(lambda session: authenticate_session(session, cookie))
    return None


def _resolved(resolve: Callable[[Session], Principal]) -> Principal:
    """Resolve the credentials on the request's read session: one round trip on PostgreSQL instead of
    a transaction of its own (BEGIN, SELECT, COMMIT). The token's last-use stamp, when due, is one
    UPDATE, whole on its own."""
    session = read_db()
    principal = resolve(session)
    # Ends the transaction there is on SQLite (BEGIN IMMEDIATE holds the write lock, which the view's
    # own transaction needs) and makes the stamp durable there; on PostgreSQL nothing is sent.
    session.commit()
    return principal


def _refuse_cross_site_writes() -> None:
    """A browser sends the cookie whatever page made the request: a write must come from an origin
    we trust (CORS keeps other origins from reading answers, not from sending requests)."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    settings = runtime().settings
    if origin is None:
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise Forbidden("cross-site requests cannot use the session cookie", code="CROSS_SITE_REQUEST")
        return
    if origin.rstrip("/") == settings.public_url or cors.origin_allowed(origin, settings):
        return
    raise Forbidden(f"requests from {origin} cannot use the session cookie", code="CROSS_SITE_REQUEST")


def init_app(app: Flask) -> None:
    app.before_request(authenticate)
