"""Who may call what: the authorisation matrix, sessions, token revocation, public endpoints."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, update

from libra_deploy import auth
from libra_deploy.db import transaction, utcnow
from libra_deploy.models import ApiToken, Deployment, UserSession
from tests.helpers import Tenant, custom_app, make_tenant, queued_deployment, text_files

VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Rules anyone may call without credentials.
PUBLIC_RULES = {
    "/",
    "/health",
    "/docs",
    "/openapi.json",
    "/docs/scalar.js",
    "/metrics",
    "/sites/<site>",
    "/sites/<site>/",
    "/sites/<site>/<path:path>",
}
#: A SHA-256 that names nothing in particular.
SOME_HASH = "0" * 64


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False
    if code is not None:
        assert body["error"] == code, body
    return body


class Victim:
    """Another organisation, with a project and a deployment to aim at."""

    def __init__(self, runtime) -> None:
        from libra_deploy import webhooks

        self.tenant = make_tenant(runtime)
        self.deployment_id = queued_deployment(runtime, self.tenant)
        with transaction(runtime.sessions) as session:
            owner = auth.Principal(self.tenant.org_id, self.tenant.user_id, "tok_test")
            hook, _secret = webhooks.create(
                session, runtime.settings, owner, self.tenant.project_id, "http://127.0.0.1:9/hook"
            )
            self.webhook_id = hook.id


@pytest.fixture(scope="module")
def victim(runtime) -> Victim:
    return Victim(runtime)


def _url(rule: str, victim: Victim) -> str:
    """The rule's URL aimed at the victim's things (path parameters filled by name)."""
    values = {
        "<project_id>": victim.tenant.project_id,
        "<site>": victim.tenant.project_id,
        "<org_id>": victim.tenant.org_id,
        "<deployment_id>": victim.deployment_id,
        "<sha256>": SOME_HASH,
        "<webhook_id>": victim.webhook_id,
        "<path:path>": "index.html",
        "<name>": "API_URL",
    }
    url = rule
    for placeholder, value in values.items():
        url = url.replace(placeholder, value)
    assert "<" not in url, f"the matrix does not know how to fill {rule}: add its parameters to _url"
    if rule == "/deploy-status":
        url += f"?id={victim.deployment_id}"
    return url


#: Every (rule, verb) an authenticated caller may use, and what it must answer when aimed at
#: another organisation's things: never a success on them.
CROSS_ORG = {
    ("/deploy", "POST"): (404, lambda v: {"json": {"projectId": v.tenant.project_id}}),
    ("/deploy-status", "GET"): (404, lambda v: {}),
    ("/projects/<project_id>", "GET"): (404, lambda v: {}),
    ("/orgs/<org_id>/quota", "GET"): (404, lambda v: {}),
    ("/projects/<project_id>", "PATCH"): (404, lambda v: {"json": {"name": "renamed"}}),
    ("/projects/<project_id>/promote", "POST"): (404, lambda v: {"json": {"deploymentId": v.deployment_id}}),
    ("/projects/<project_id>/rollback", "POST"): (404, lambda v: {"json": {"deploymentId": v.deployment_id}}),
    ("/projects/<project_id>/files/check", "POST"): (404, lambda v: {"json": {"hashes": [SOME_HASH]}}),
    ("/projects/<project_id>/files/<sha256>", "PUT"): (404, lambda v: {"data": b"x"}),
    ("/projects/<project_id>/env", "GET"): (404, lambda v: {}),
    ("/projects/<project_id>/env/<name>", "PUT"): (404, lambda v: {"json": {"value": "theirs"}}),
    ("/projects/<project_id>/env/<name>", "DELETE"): (404, lambda v: {}),
    ("/deployments/<deployment_id>/cancel", "POST"): (404, lambda v: {}),
    ("/deployments/<deployment_id>", "GET"): (404, lambda v: {}),
    ("/deployments/<deployment_id>/logs", "GET"): (404, lambda v: {}),
    ("/deployments/<deployment_id>/redeploy", "POST"): (404, lambda v: {}),
    ("/projects/<project_id>/deployments", "GET"): (404, lambda v: {}),
    ("/projects/<project_id>/webhooks", "GET"): (404, lambda v: {}),
    ("/projects/<project_id>/webhooks", "POST"): (
        404,
        lambda v: {"json": {"url": "http://127.0.0.1:9/hook"}},
    ),
    ("/projects/<project_id>/webhooks/<webhook_id>", "DELETE"): (404, lambda v: {}),
    ("/projects/<project_id>/webhooks/<webhook_id>/deliveries", "GET"): (404, lambda v: {}),
    ("/deployments/<deployment_id>/pin", "PUT"): (404, lambda v: {}),
    ("/deployments/<deployment_id>/pin", "DELETE"): (404, lambda v: {}),
    # The templates shipped with the service belong to nobody: every organisation may list them.
    ("/templates", "GET"): (200, lambda v: {}),
    # A body cannot name another organisation: the project lands in the caller's (checked below).
    ("/projects", "POST"): (400, lambda v: {"json": {"name": "theirs", "orgId": v.tenant.org_id}}),
}


def _other_rule_answers(app, url: str, verb: str, rule: str) -> bool:
    """Whether another rule takes ``verb`` on ``url`` (``PUT .../files/check`` is a file upload)."""
    from werkzeug.exceptions import HTTPException

    try:
        matched, _ = app.url_map.bind("localhost").match(url.split("?")[0], method=verb, return_rule=True)
    except HTTPException:
        return False
    return matched.rule != rule


def _rules(app) -> list[tuple[str, set[str]]]:
    return sorted(
        (rule.rule, set(rule.methods or ()) - {"HEAD", "OPTIONS"}) for rule in app.url_map.iter_rules()
    )


def test_every_endpoint_is_in_the_matrix(app):
    for rule, methods in _rules(app):
        if rule in PUBLIC_RULES:
            continue
        for method in methods:
            assert (rule, method) in CROSS_ORG, f"{method} {rule} is missing from the authorisation matrix"


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "UNAUTHORIZED"), ({"Authorization": "Bearer ldt_made-up-value"}, "INVALID_TOKEN")],
    ids=["no credentials", "unknown token"],
)
def test_without_valid_credentials_only_the_public_endpoints_answer(app, client, victim, headers, code):
    # The unknown token covers the endpoints whose view resolves the token (web.auth.RESOLVED_BY_VIEW).
    for rule, methods in _rules(app):
        url = _url(rule, victim)
        for verb in VERBS:
            if verb not in methods and _other_rule_answers(app, url, verb, rule):
                continue
            body = {} if verb in ("POST", "PUT", "PATCH") else None
            response = client.open(url, method=verb, json=body, headers=headers)
            if verb not in methods:
                assert response.status_code == 405, (verb, url, response.status_code)
            elif rule in PUBLIC_RULES:
                assert response.status_code not in (401, 403), (verb, url)
                assert response.status_code < 500, (verb, url)
            else:
                _error(response, 401, code)


def _session_cookie(runtime, tenant: Tenant) -> str:
    with transaction(runtime.sessions) as session:
        _row, value = auth.create_session(
            session, org_id=tenant.org_id, user_id=tenant.user_id, ttl=timedelta(hours=1)
        )
    return value


@pytest.mark.parametrize("credential", ["bearer", "session"])
def test_no_cross_organisation_read_or_write_succeeds(app, runtime, victim, credential):
    caller = make_tenant(runtime)
    client = app.test_client()
    if credential == "bearer":
        headers = caller.headers
    else:
        client.set_cookie("session", _session_cookie(runtime, caller))
        headers = {}
    for rule, methods in _rules(app):
        if rule in PUBLIC_RULES:
            continue
        for verb in VERBS:
            if verb not in methods and _other_rule_answers(app, _url(rule, victim), verb, rule):
                continue
            extra = CROSS_ORG[(rule, verb)][1](victim) if (rule, verb) in CROSS_ORG else {}
            response = client.open(_url(rule, victim), method=verb, headers=headers, **extra)
            if verb not in methods:
                assert response.status_code == 405
                continue
            expected = CROSS_ORG[(rule, verb)][0]
            assert response.status_code == expected, (verb, rule, response.get_json())
    # The project created above belongs to the caller, and nothing was added to the victim's project.
    created = client.post("/projects", json={"name": "probe"}, headers=headers).get_json()
    assert created["orgId"] == caller.org_id
    with runtime.sessions() as session:
        victims = session.scalar(
            select(func.count())
            .select_from(Deployment)
            .where(Deployment.project_id == victim.tenant.project_id)
        )
    assert victims == 1


def test_the_victim_itself_reads_its_own_things(client, victim):
    headers = victim.tenant.headers
    assert client.get(f"/projects/{victim.tenant.project_id}", headers=headers).status_code == 200
    assert client.get(f"/deploy-status?id={victim.deployment_id}", headers=headers).status_code == 200
    quota = client.get(f"/orgs/{victim.tenant.org_id}/quota", headers=headers).get_json()
    assert quota["orgId"] == victim.tenant.org_id
    assert quota["reserved"] >= 1


# Sessions --------------------------------------------------------------------------------------


def test_a_session_cookie_authenticates_like_a_token(app, runtime, tenant):
    client = app.test_client()
    client.set_cookie("session", _session_cookie(runtime, tenant))
    project = client.get(f"/projects/{tenant.project_id}")
    assert project.status_code == 200
    assert project.get_json()["orgId"] == tenant.org_id


def test_an_expired_session_is_refused(app, runtime, tenant):
    value = _session_cookie(runtime, tenant)
    client = app.test_client()
    client.set_cookie("session", value)
    assert client.get(f"/projects/{tenant.project_id}").status_code == 200
    with transaction(runtime.sessions) as session:
        session.execute(
            update(UserSession)
            .where(UserSession.session_hash == auth.hash_token(value))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    _error(client.get(f"/projects/{tenant.project_id}"), 401, "INVALID_SESSION")


def test_an_unknown_session_is_refused(app):
    client = app.test_client()
    client.set_cookie("session", "lds_made-up-value")
    _error(client.get("/projects/prj_x"), 401, "INVALID_SESSION")


def test_a_session_cannot_be_used_for_writes_from_another_site(app, runtime, tenant):
    client = app.test_client()
    client.set_cookie("session", _session_cookie(runtime, tenant))
    body = {"projectId": "prj_unknown"}
    refused = client.post("/deploy", json=body, headers={"Origin": "https://evil.example.io"})
    _error(refused, 403, "CROSS_SITE_REQUEST")
    allowed = client.post("/deploy", json=body, headers={"Origin": "http://localhost:5173"})
    _error(allowed, 404, "PROJECT_NOT_FOUND")


@pytest.mark.parametrize("path", ["/projects/{project}", "/deploy-status?id={deployment}"])
def test_a_revoked_token_is_refused(client, runtime, path):
    # GET /deploy-status resolves its token in the statement that reads the status: the same answers.
    tenant = make_tenant(runtime)
    url = path.format(project=tenant.project_id, deployment=queued_deployment(runtime, tenant))
    assert client.get(url, headers=tenant.headers).status_code == 200
    with transaction(runtime.sessions) as session:
        row = session.scalars(
            select(ApiToken).where(ApiToken.token_hash == auth.hash_token(tenant.token))
        ).one()
        auth.revoke_token(session, row.id)
        # Revoking twice is harmless.
        auth.revoke_token(session, tenant.token)
    _error(client.get(url, headers=tenant.headers), 401, "INVALID_TOKEN")


def test_an_unknown_token_on_deploy_status_is_refused_whatever_the_id(settings, runtime):
    deployment_id = queued_deployment(runtime, make_tenant(runtime))
    unknown = {"Authorization": "Bearer ldt_made-up-value"}
    for public in (False, True):
        with custom_app(settings, deploy_status_public=public) as app:
            client = app.test_client()
            for some_id in (deployment_id, "dep_nonexistent", "not-an-id", "%00%F4%8F%BB%B6"):
                _error(client.get(f"/deploy-status?id={some_id}", headers=unknown), 401, "INVALID_TOKEN")
            basic = {"Authorization": "Basic x"}
            _error(client.get("/deploy-status?id=x", headers=basic), 401, "UNAUTHORIZED")


@pytest.mark.stack
def test_a_status_poll_with_a_token_is_one_statement(client, runtime, tenant):
    # On every stack: on PostgreSQL it is the whole round trip (autocommit); SQLite adds the
    # transaction's BEGIN IMMEDIATE, which is not a query and is not counted.
    url = f"/deploy-status?id={queued_deployment(runtime, tenant)}"
    assert client.get(url, headers=tenant.headers).status_code == 200  # stamps the token's last use
    statements: list[str] = []

    def capture(_conn, _cursor, statement, _params, _context, _many) -> None:
        if not statement.startswith("BEGIN"):
            statements.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", capture)
    try:
        polled = client.get(url, headers=tenant.headers)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", capture)
    assert polled.status_code == 200
    assert len(statements) == 1, statements
    assert "api_tokens" in statements[0]


@pytest.mark.stack
def test_an_id_that_cannot_be_one_is_404_with_a_valid_token(client, tenant):
    # Not sent to the database, whose text cannot hold a NUL byte: the token is still resolved.
    for some_id in ("%00%F4%8F%BB%B6", "dep_%00", "dep_%C3%A9t%C3%A9"):
        answer = client.get(f"/deploy-status?id={some_id}", headers=tenant.headers)
        _error(answer, 404, "DEPLOYMENT_NOT_FOUND")


@pytest.mark.stack
@pytest.mark.parametrize("path", ["/projects/{project}", "/deploy-status?id={deployment}"])
def test_a_tokens_last_use_is_stamped_once_a_minute(client, runtime, path):
    tenant = make_tenant(runtime)
    url = path.format(project=tenant.project_id, deployment=queued_deployment(runtime, tenant))

    def last_used():
        with runtime.sessions() as session:
            return session.scalar(
                select(ApiToken.last_used_at).where(ApiToken.token_hash == auth.hash_token(tenant.token))
            )

    assert last_used() is None
    assert client.get(url, headers=tenant.headers).status_code == 200
    first = last_used()
    assert first is not None
    assert utcnow() - first < timedelta(minutes=1)
    assert client.get(url, headers=tenant.headers).status_code == 200
    assert last_used() == first
    with transaction(runtime.sessions) as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == auth.hash_token(tenant.token))
            .values(last_used_at=first - auth.LAST_USED_PRECISION - timedelta(seconds=1))
        )
    assert client.get(url, headers=tenant.headers).status_code == 200
    # Set back past the precision, then stamped again (not left where it was set).
    assert last_used() >= first


# Public endpoints --------------------------------------------------------------------------------


def test_deploy_status_public_shows_any_deployment_with_logs_redacted(settings, runtime, tenant):
    from libra_deploy.models import DeploymentLog

    deployment_id = queued_deployment(runtime, tenant)
    with transaction(runtime.sessions) as session:
        # A line stored unredacted (as by an older version): the public view redacts it again.
        session.add(DeploymentLog(deployment_id=deployment_id, message="db password=hunter2secret"))
    other = make_tenant(runtime)
    with custom_app(settings, deploy_status_public=True) as public_app:
        client = public_app.test_client()
        anonymous = client.get(f"/deploy-status?id={deployment_id}")
        assert anonymous.status_code == 200
        body = anonymous.get_json()
        assert body["deploymentId"] == deployment_id
        assert "db password=***" in body["logs"]
        assert "hunter2secret" not in anonymous.get_data(as_text=True)
        # Another organisation gets the same public view, not a 404.
        assert client.get(f"/deploy-status?id={deployment_id}", headers=other.headers).status_code == 200
        _error(client.get("/deploy-status?id=dep_nonexistent"), 404, "DEPLOYMENT_NOT_FOUND")
        # The rest of the API stays private.
        _error(client.get(f"/projects/{tenant.project_id}"), 401)
    with custom_app(settings) as private_app:
        _error(private_app.test_client().get(f"/deploy-status?id={deployment_id}"), 401)


def test_metrics_is_public_unless_metrics_token_is_set(settings):
    with custom_app(settings) as open_app:
        assert open_app.test_client().get("/metrics").status_code == 200
    with custom_app(settings, metrics_token="metrics-secret-value") as guarded:
        client = guarded.test_client()
        _error(client.get("/metrics"), 401)
        _error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
        ok = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret-value"})
        assert ok.status_code == 200
        assert "libra_deployments" in ok.get_data(as_text=True)


def test_a_deployment_of_another_org_is_never_started(client, runtime, victim):
    caller = make_tenant(runtime)
    body = {"projectId": victim.tenant.project_id, "initFiles": text_files({"x.html": "x"})}
    _error(client.post("/deploy", json=body, headers=caller.headers), 404, "PROJECT_NOT_FOUND")
    body = {"projectId": caller.project_id, "orgId": victim.tenant.org_id}
    _error(client.post("/deploy", json=body, headers=caller.headers), 403, "ORG_MISMATCH")
