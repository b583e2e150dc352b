"""Rate limits of POST /deploy (flask-limiter): per credential and per organisation.

The counters live in RATE_LIMIT_STORAGE_URL (Redis in production, so that every web process shares
them; this process's memory in the embedded default). They are counted at one precise point of the
request, after the body was found valid and before the project is looked up, so that the answers
keep their order (401, 400/413, 429, 404, 409...): the view hands :func:`deploy_rate_limit` to the
use case, which calls it there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, current_app, request
from flask_limiter import Limiter

from libra_deploy.config import Settings
from web.context import principal

EXTENSION = "libra_deploy_rate_limits"
#: The one endpoint with limits: every other request is let through before flask-limiter resolves
#: any limit (its check runs on every request, a status poll included).
LIMITED_ENDPOINT = "deploy.Deploy"
#: When the limit's window cannot be read (the storage went away), how long a client should wait.
DEFAULT_RETRY_AFTER_S = 60


def _credential_key() -> str:
    return f"credential:{principal().token_id}"


def _org_key() -> str:
    return f"org:{principal().org_id}"


def init_app(app: Flask, settings: Settings) -> None:
    limiter = Limiter(
        _credential_key,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        # A moving window: no burst of twice the limit across a window's edge.
        strategy="moving-window",
        headers_enabled=True,
        key_prefix="libra-deploy",
        # Redis unreachable: keep limiting, per process, rather than fail every deployment.
        in_memory_fallback_enabled=True,
    )

    @limiter.request_filter
    def unlimited() -> bool:
        return request.endpoint != LIMITED_ENDPOINT

    @limiter.limit(
        settings.deploy_rate_limit_per_org,
        key_func=_org_key,
        error_message=f"Too many deployments for this organisation: DEPLOY_RATE_LIMIT_PER_ORG allows "
        f"{settings.deploy_rate_limit_per_org}",
    )
    @limiter.limit(
        settings.deploy_rate_limit_per_token,
        key_func=_credential_key,
        error_message=f"Too many deployments with these credentials: DEPLOY_RATE_LIMIT_PER_TOKEN allows "
        f"{settings.deploy_rate_limit_per_token}",
    )
    def count_deployment() -> None:
        """Count one deployment request against both limits; flask-limiter raises 429 past them."""

    app.extensions[EXTENSION] = (limiter, count_deployment)


def deploy_rate_limit() -> Callable[[], None]:
    """The check POST /deploy runs once the request is known to be well-formed."""
    _limiter, count = current_app.extensions[EXTENSION]
    return count


def retry_after() -> int:
    """Seconds until the breached limit lets a request through again."""
    limiter, _count = current_app.extensions[EXTENSION]
    current = limiter.current_limit
    try:
        reset_at = current.reset_at if current is not None else None
    except Exception:
        # Reading the window needs the storage, which may have just gone away: the 429 still goes out.
        reset_at = None
    if reset_at is None:
        return DEFAULT_RETRY_AFTER_S
    return max(int(reset_at - time.time()), 1)
