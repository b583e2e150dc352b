"""The Flask application factory: ``gunicorn "web:create_app()"``."""

from __future__ import annotations

import flask_smorest
from flask import Flask

from libra_deploy import __version__
from libra_deploy.config import Settings
from libra_deploy.logging_config import configure_logging
from libra_deploy.redact import install_log_redaction
from libra_deploy.runtime import Runtime
from web import auth, context, cors, errors, limits, observability
from web.api import (
    deploy,
    deployments,
    files,
    history,
    metrics,
    orgs,
    projects,
    releases,
    service,
    sites,
    templates,
    variables,
    webhooks,
)
from web.openapi import Examples, OperationIds
from web.schemas import ErrorSchema


class Api(flask_smorest.Api):
    # Documents our error shape instead of flask-smorest's default; the handlers live in web.errors.
    ERROR_SCHEMA = ErrorSchema


def create_app(runtime: Runtime | None = None) -> Flask:
    """Build the app on ``runtime``, or on one made from the environment's settings."""
    runtime = runtime or Runtime.from_settings(Settings.from_env())
    configure_logging(runtime.settings)
    # Nothing logged from here on may show a secret of the service.
    install_log_redaction(runtime.settings.secret_values())
    if runtime.settings.sandbox_provider == "local":
        # Says at start-up, in the log, when builds cannot be isolated with bubblewrap here.
        runtime.sandbox()
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=runtime.settings.max_request_bytes,
        JSON_SORT_KEYS=False,
        API_TITLE="Libra Deploy API",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": "Deploy projects through a queue of six steps."},
            "servers": [{"url": runtime.settings.public_url}],
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer"},
                    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": auth.SESSION_COOKIE},
                    "metricsToken": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "METRICS_TOKEN, when the service sets one",
                    },
                },
            },
            "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        },
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["libra_deploy"] = runtime
    app.teardown_appcontext(context.close_db)
    observability.init_app(app)
    sites.init_app(app)
    cors.init_app(app, runtime.settings)
    auth.init_app(app)
    # After authentication: the limits count per credential and organisation.
    limits.init_app(app, runtime.settings)
    api = Api(app, spec_kwargs={"extra_plugins": [OperationIds(), Examples()]})
    modules = (
        service,
        deploy,
        deployments,
        history,
        projects,
        releases,
        files,
        webhooks,
        orgs,
        variables,
        templates,
        metrics,
        sites,
    )
    for module in modules:
        api.register_blueprint(module.blp)
    # After flask-smorest's own handler, so that ours answer every error.
    errors.register(app)
    return app
