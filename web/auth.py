"""Authentication: every endpoint needs credentials except those of the public blueprints."""

from __future__ import annotations

from flask import Flask, g, request

from libra_deploy.auth import authenticate_token
from libra_deploy.db import transaction
from libra_deploy.errors import Unauthorized
from web.context import runtime

#: Blueprints anyone may call: service information, health, the API documents, the served sites.
PUBLIC_BLUEPRINTS = frozenset({"service", "api-docs", "sites"})
#: /metrics checks METRICS_TOKEN itself (web/api/metrics.py), when one is set.
PUBLIC_BLUEPRINTS |= {"metrics"}


def authenticate() -> None:
    if request.method == "OPTIONS" or request.endpoint is None or request.blueprint in PUBLIC_BLUEPRINTS:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("authentication required: send Authorization: Bearer <token>", code="UNAUTHORIZED")
    with transaction(runtime().sessions) as session:
        g.principal = authenticate_token(session, token.strip())


def init_app(app: Flask) -> None:
    app.before_request(authenticate)
