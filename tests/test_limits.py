"""CORS, rate limits, the cap on active deployments, and the order in which POST /deploy refuses."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from libra_deploy import accounts, auth, quota
from libra_deploy.config import Settings
from libra_deploy.db import transaction
from libra_deploy.models import Deployment
from tests.helpers import custom_app, make_tenant, new_project, queued_deployment, text_files


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False
    assert body["error"] == code, body
    assert body["message"]
    return body


def _deployments(runtime, project_id: str) -> int:
    with runtime.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(Deployment).where(Deployment.project_id == project_id)
        )


# CORS --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:5173",
        "http://localhost",
        "https://localhost:8443",
        "http://127.0.0.1:3000",
        "https://zepid.dev",
        "https://app.zepid.dev",
        "https://APP.zepid.dev",
    ],
)
def test_allowed_origins_are_echoed_with_credentials(client, origin):
    response = client.get("/health", headers={"Origin": origin})
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in response.headers.get("Vary", "")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.io",
        "https://zepid.dev.evil.io",
        "https://evilzepid.dev",
        "https://a.b.zepid.dev",
        "http://zepid.dev",
        "https://zepid.dev:8443",
        "http://localhost.evil.io",
        "http://127.0.0.1.evil.io:80",
        "null",
    ],
)
def test_other_origins_get_no_cors_headers(client, origin):
    response = client.get("/health", headers={"Origin": origin})
    assert response.status_code in (200, 503)
    assert not [name for name, _value in response.headers if name.lower().startswith("access-control-")]


def test_a_preflight_from_localhost_allows_credentials_and_the_auth_header(client):
    response = client.options(
        "/deploy",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


def test_errors_carry_cors_headers_too(client):
    response = client.post("/deploy", json={}, headers={"Origin": "http://localhost:3000"})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_configured_origins_replace_the_default_ones(settings):
    configured = Settings.from_env(
        {**settings.extra, "CORS_ORIGINS": "https://ide.example.io, https://*.acme.io"}
    )
    with custom_app(settings, cors_origins=configured.cors_origins) as app:
        client = app.test_client()
        for origin in ("https://ide.example.io", "https://www.acme.io", "http://localhost:1234"):
            assert (
                client.get("/health", headers={"Origin": origin}).headers.get("Access-Control-Allow-Origin")
                == origin
            )
        for origin in ("https://zepid.dev", "https://acme.io", "https://x.ide.example.io"):
            assert (
                "Access-Control-Allow-Origin" not in client.get("/health", headers={"Origin": origin}).headers
            )


# Rate limits: Redis counters, or memory where the broker is not Redis (so the stack matters) ---------


@pytest.mark.stack
def test_the_rate_limit_per_token_answers_429_with_retry_after(settings, runtime):
    tenant = make_tenant(runtime)
    with custom_app(settings, deploy_rate_limit_per_token="3/minute") as app:
        client = app.test_client()
        for _ in range(3):
            # Well-formed requests count, whatever comes of them later (here: an unknown project).
            _error(
                client.post("/deploy", json={"projectId": "prj_none"}, headers=tenant.headers),
                404,
                "PROJECT_NOT_FOUND",
            )
        limited = client.post("/deploy", json={"projectId": tenant.project_id}, headers=tenant.headers)
        body = _error(limited, 429, "RATE_LIMITED")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert body["details"]["retryAfter"] == int(limited.headers["Retry-After"])
        assert "DEPLOY_RATE_LIMIT_PER_TOKEN" in body["message"]
        assert body["timestamp"].endswith("Z")
        # Another token of the same organisation has its own allowance.
        with transaction(runtime.sessions) as session:
            _row, second = auth.create_token(session, org_id=tenant.org_id, user_id=tenant.user_id)
        other = client.post(
            "/deploy", json={"projectId": "prj_none"}, headers={"Authorization": f"Bearer {second}"}
        )
        _error(other, 404, "PROJECT_NOT_FOUND")
    assert _deployments(runtime, tenant.project_id) == 0


@pytest.mark.stack
def test_the_rate_limit_per_organisation_spans_its_tokens(settings, runtime):
    tenant = make_tenant(runtime)
    with transaction(runtime.sessions) as session:
        _row, second = auth.create_token(session, org_id=tenant.org_id, user_id=tenant.user_id)
    with custom_app(settings, deploy_rate_limit_per_org="2/minute") as app:
        client = app.test_client()
        for headers in (tenant.headers, {"Authorization": f"Bearer {second}"}):
            _error(
                client.post("/deploy", json={"projectId": "prj_none"}, headers=headers),
                404,
                "PROJECT_NOT_FOUND",
            )
        limited = client.post(
            "/deploy", json={"projectId": "prj_none"}, headers={"Authorization": f"Bearer {second}"}
        )
        body = _error(limited, 429, "RATE_LIMITED")
        assert "DEPLOY_RATE_LIMIT_PER_ORG" in body["message"]
        assert int(limited.headers["Retry-After"]) >= 1


# The cap on active deployments ----------------------------------------------------------------------


@pytest.mark.stack
def test_the_cap_on_queued_or_running_deployments_per_organisation(settings, runtime):
    tenant = make_tenant(runtime)
    first, second, third = tenant.project_id, new_project(runtime, tenant), new_project(runtime, tenant)
    queued_deployment(runtime, tenant, first)
    queued_deployment(runtime, tenant, second)
    with custom_app(settings, max_active_deployments_per_org=2) as app:
        client = app.test_client()
        body = {"projectId": third, "initFiles": text_files({"index.html": "capped"})}
        refused = client.post("/deploy", json=body, headers=tenant.headers)
        error = _error(refused, 429, "TOO_MANY_ACTIVE_DEPLOYMENTS")
        assert error["details"] == {"limit": "MAX_ACTIVE_DEPLOYMENTS_PER_ORG", "value": 2}
        assert int(refused.headers["Retry-After"]) > 0
    assert _deployments(runtime, third) == 0
    # Another organisation is not affected by this one's deployments.
    other = make_tenant(runtime)
    with custom_app(settings, max_active_deployments_per_org=2) as app:
        response = app.test_client().post(
            "/deploy", json={"projectId": other.project_id}, headers=other.headers
        )
        assert response.status_code == 202, response.get_json()


# The order of the checks ----------------------------------------------------------------------------


class Scene:
    """An organisation set up so that several refusals apply at once."""

    def __init__(self, settings, runtime) -> None:
        self.runtime = runtime
        self.tenant = make_tenant(runtime)
        self.holder = make_tenant(runtime)
        with transaction(runtime.sessions) as session:
            taken = accounts.create_project(
                session, self.holder.org_id, "held", custom_domain=f"held-{uuid.uuid4().hex[:8]}.io"
            )
        self.taken_domain = taken.custom_domain
        self.busy = self.tenant.project_id  # has a deployment queued (409 on it)
        self.free = new_project(runtime, self.tenant)

    def fill_cap(self) -> None:
        queued_deployment(self.runtime, self.tenant, self.busy)

    def exhaust_quota(self) -> None:
        with transaction(self.runtime.sessions) as session:
            quota.set_limit(session, self.tenant.org_id, 0)

    def exhaust_rate(self, client) -> None:
        for _ in range(2):
            client.post("/deploy", json={"projectId": "prj_none"}, headers=self.tenant.headers)


BAD_PATH = [{"path": "../escape", "content": "x"}]
#: Each case makes two (or more) refusals hold at once; the first in the contract's order wins:
#: 401, 400/413, 429 rate, 404, 409, 429 cap, 429 quota.
ORDER_CASES = [
    ("401 before 400", [], lambda s: {"projectId": "", "initFiles": BAD_PATH}, False, 401, "UNAUTHORIZED"),
    (
        "400 before 429 rate",
        ["rate"],
        lambda s: {"projectId": s.free, "initFiles": BAD_PATH},
        True,
        400,
        "VALIDATION_ERROR",
    ),
    (
        "413 before 429 rate",
        ["rate"],
        lambda s: {"projectId": s.free, "historyMessages": [{"role": "user", "content": "x"}] * 3},
        True,
        413,
        "PAYLOAD_TOO_LARGE",
    ),
    ("429 rate before 404", ["rate"], lambda s: {"projectId": "prj_none"}, True, 429, "RATE_LIMITED"),
    ("429 rate before 409", ["rate", "cap"], lambda s: {"projectId": s.busy}, True, 429, "RATE_LIMITED"),
    (
        "404 before 409 domain",
        [],
        lambda s: {"projectId": "prj_none", "customDomain": s.taken_domain},
        True,
        404,
        "PROJECT_NOT_FOUND",
    ),
    ("409 before 429 cap", ["cap"], lambda s: {"projectId": s.busy}, True, 409, "DEPLOYMENT_IN_PROGRESS"),
    (
        "409 domain before 429 quota",
        ["quota"],
        lambda s: {"projectId": s.free, "customDomain": s.taken_domain},
        True,
        409,
        "DOMAIN_TAKEN",
    ),
    (
        "429 cap before 429 quota",
        ["cap", "quota"],
        lambda s: {"projectId": s.free},
        True,
        429,
        "TOO_MANY_ACTIVE_DEPLOYMENTS",
    ),
    ("429 quota alone", ["quota"], lambda s: {"projectId": s.free}, True, 429, "DEPLOYMENT_QUOTA_EXCEEDED"),
]


@pytest.mark.stack
@pytest.mark.parametrize(
    ("conditions", "body", "authenticated", "status", "code"),
    [case[1:] for case in ORDER_CASES],
    ids=[case[0] for case in ORDER_CASES],
)
def test_refusals_come_in_the_contracts_order(
    settings, runtime, conditions, body, authenticated, status, code
):
    scene = Scene(settings, runtime)
    with custom_app(
        settings,
        deploy_rate_limit_per_token="2/minute",
        max_active_deployments_per_org=1,
        max_history_messages=2,
    ) as app:
        client = app.test_client()
        if "cap" in conditions:
            scene.fill_cap()
        if "quota" in conditions:
            scene.exhaust_quota()
        if "rate" in conditions:
            scene.exhaust_rate(client)
        headers = scene.tenant.headers if authenticated else {}
        response = client.post("/deploy", json=body(scene), headers=headers)
        _error(response, status, code)
        if status == 429:
            assert int(response.headers["Retry-After"]) > 0
    assert _deployments(runtime, scene.free) == 0
