"""Authentication: who is calling, and which endpoints anyone may call.

Credentials are a Bearer API token (``Authorization: Bearer ldt_...``) or a browser session (the
``session`` cookie). Public without credentials: ``/``, ``/health``, ``/docs``, ``/openapi.json``,
the served sites (the ``sites`` blueprint; a blueprint serving sites by Host header belongs in
:data:`PUBLIC_BLUEPRINTS` too), ``/metrics`` unless METRICS_TOKEN guards it, and ``/deploy-status``
when DEPLOY_STATUS_PUBLIC is set. Everything else needs credentials and shows only the caller's
organisation (another organisation's things are 404, never 403, so that ids cannot be probed).
A Bearer token is resolved here, before the view, except on the endpoints of
:data:`RESOLVED_BY_VIEW`, whose view resolves it before it shows anything.
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


#: Endpoints whose view resolves a Bearer token itself, from :func:`web.context.unresolved_token`, in
#: the statement that reads what it shows (:func:`libra_deploy.auth.principal_of_token`): GET
#: /deploy-status, which clients poll every second or so, is then one round trip instead of two.
RESOLVED_BY_VIEW = frozenset({DEPLOY_STATUS_ENDPOINT})


def authenticate() -> None:
    g.principal = None
    g.unresolved_token = None
    if request.method == "OPTIONS" or request.endpoint is None:
        return
    if request.blueprint in PUBLIC_BLUEPRINTS:
        return
    token = _bearer_token()
    if token is not None and request.endpoint in RESOLVED_BY_VIEW:
        g.unresolved_token = token
        return
    g.principal = _principal(token)
    if g.principal is None:
        if request.endpoint == DEPLOY_STATUS_ENDPOINT and runtime().settings.deploy_status_public:
            return
        raise Unauthorized(
            "authentication required: send Authorization: Bearer <token> or a session cookie",
            code="UNAUTHORIZED",
        )


def _bearer_token() -> str | None:
    """The token of the request's Authorization header; None when it has none."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be: Bearer <token>", code="UNAUTHORIZED")
    return token.strip()


def _principal(token: str | None) -> Principal | None:
    """The caller named by the request's credentials; None when it carries none."""
    if token is not None:
        return _resolved(lambda session: authenticate_token(session, token))
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
