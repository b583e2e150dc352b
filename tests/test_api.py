"""The HTTP contract: authentication, scoping, validation and the error shape."""

from __future__ import annotations

import base64
import uuid

import pytest

from libra_deploy.sources import blob_key, sha256_hex
from tests.helpers import make_tenant, text_files

SITE = text_files({"index.html": "<h1>hi</h1>"})


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    body = response.get_json()
    assert body["success"] is False
    assert body["message"]
    assert body["timestamp"].endswith("Z")
    if code is not None:
        assert body["error"] == code, body
    return body


def test_deploy_without_a_token_is_401(client, tenant):
    _error(client.post("/deploy", json={"projectId": tenant.project_id}), 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "header", ["Bearer ldt_not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer", "ldt_no-scheme"]
)
def test_deploy_with_a_bad_token_is_401(client, tenant, header):
    response = client.post(
        "/deploy", json={"projectId": tenant.project_id}, headers={"Authorization": header}
    )
    _error(response, 401)


def test_status_needs_a_token_too(client, tenant):
    _error(client.get("/deploy-status?id=dep_x"), 401)


def test_org_id_of_another_organisation_is_403_and_nothing_is_written(client, runtime, tenant):
    other = make_tenant(runtime)
    body = {"projectId": tenant.project_id, "orgId": other.org_id, "initFiles": SITE}
    _error(client.post("/deploy", json=body, headers=tenant.headers), 403, "ORG_MISMATCH")
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["deploymentStatus"] == "idle"


def test_user_id_of_someone_else_is_403(client, runtime, tenant):
    other = make_tenant(runtime)
    body = {"projectId": tenant.project_id, "orgId": tenant.org_id, "userId": other.user_id}
    _error(client.post("/deploy", json=body, headers=tenant.headers), 403, "USER_MISMATCH")


def test_matching_org_and_user_ids_are_accepted(client, tenant, worker):
    body = {
        "projectId": tenant.project_id,
        "orgId": tenant.org_id,
        "userId": tenant.user_id,
        "initFiles": SITE,
    }
    response = client.post("/deploy", json=body, headers=tenant.headers)
    assert response.status_code == 202
    accepted = response.get_json()
    assert accepted["success"] is True
    assert accepted["status"] == "queued"
    assert accepted["deploymentId"].startswith("dep_")
    assert accepted["statusUrl"] == f"http://testserver/deploy-status?id={accepted['deploymentId']}"


def test_another_organisations_project_is_404(client, runtime, tenant):
    other = make_tenant(runtime)
    body = {"projectId": other.project_id, "initFiles": SITE}
    _error(client.post("/deploy", json=body, headers=tenant.headers), 404, "PROJECT_NOT_FOUND")
    _error(client.get(f"/projects/{other.project_id}", headers=tenant.headers), 404, "PROJECT_NOT_FOUND")


def test_another_organisations_deployment_is_404(client, runtime, tenant, worker):
    other = make_tenant(runtime)
    response = client.post(
        "/deploy", json={"projectId": other.project_id, "initFiles": SITE}, headers=other.headers
    )
    deployment_id = response.get_json()["deploymentId"]
    _error(
        client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers), 404, "DEPLOYMENT_NOT_FOUND"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "projectId"),
        ({"projectId": ""}, "projectId"),
        ({"projectId": 42}, "projectId"),
        ({"projectId": "p", "initFiles": "index.html"}, "initFiles"),
        ({"projectId": "p", "initFiles": [{"content": "x"}]}, "initFiles"),
        (
            {"projectId": "p", "initFiles": [{"path": "a", "content": "x", "encoding": "latin-1"}]},
            "initFiles",
        ),
        ({"projectId": "p", "historyMessages": [{"role": "system", "content": "x"}]}, "historyMessages"),
    ],
)
def test_a_body_that_fails_validation_is_400_naming_the_field(client, tenant, body, field):
    error = _error(client.post("/deploy", json=body, headers=tenant.headers), 400, "VALIDATION_ERROR")
    assert field in error["details"]


def test_malformed_json_is_400(client, tenant):
    headers = {**tenant.headers, "Content-Type": "application/json"}
    _error(client.post("/deploy", data="{not json", headers=headers), 400)


@pytest.mark.parametrize(
    ("init_file", "fragment"),
    [
        ({"path": "../escape.html", "content": "x"}, "'..'"),
        ({"path": "/etc/passwd", "content": "x"}, "absolute"),
        ({"path": "a\\b.html", "content": "x"}, "backslash"),
        ({"path": "bad\u0000name", "content": "x"}, "control"),
        ({"path": "img.png", "content": "not base64!!", "encoding": "base64"}, "base64"),
    ],
)
def test_unsafe_files_are_400_and_nothing_is_written(client, runtime, tenant, init_file, fragment):
    fine = f"fine {uuid.uuid4()}"
    body = {"projectId": tenant.project_id, "initFiles": [{"path": "ok.html", "content": fine}, init_file]}
    error = _error(client.post("/deploy", json=body, headers=tenant.headers), 400)
    assert fragment in error["message"]
    key = blob_key(sha256_hex(fine.encode()))
    assert runtime.store.missing([key]) == {key}
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["deploymentStatus"] == "idle"


def test_valid_base64_is_decoded(client, tenant, worker):
    payload = bytes(range(256))
    files = [{"path": "blob.bin", "content": base64.b64encode(payload).decode(), "encoding": "base64"}]
    response = client.post(
        "/deploy", json={"projectId": tenant.project_id, "initFiles": files}, headers=tenant.headers
    )
    assert response.status_code == 202


def test_unknown_routes_and_methods_answer_json(client):
    _error(client.get("/no-such-thing"), 404, "NOT_FOUND")
    _error(client.delete("/deploy"), 405, "METHOD_NOT_ALLOWED")


def test_projects_can_be_created_and_read_within_the_organisation(client, tenant):
    response = client.post("/projects", json={"name": "blog"}, headers=tenant.headers)
    assert response.status_code == 201
    project = response.get_json()
    assert project["orgId"] == tenant.org_id
    assert project["deploymentStatus"] == "idle"
    fetched = client.get(f"/projects/{project['id']}", headers=tenant.headers).get_json()
    assert fetched["name"] == "blog"
    _error(client.post("/projects", json={}, headers=tenant.headers), 400, "VALIDATION_ERROR")
    _error(client.post("/projects", json={"name": "x"}), 401)


def test_openapi_documents_400_not_422_and_is_3_1(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"] == "3.1.0"
    responses = spec["paths"]["/deploy"]["post"]["responses"]
    assert {"202", "400", "401", "403", "404", "409", "413"} <= set(responses)
    # The only 422 of the API: an Idempotency-Key reused with another body.
    assert "Idempotency-Key" in responses["422"]["description"]
    others = [
        f"{method} {path}"
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and "422" in operation["responses"] and path != "/deploy"
    ]
    assert others == []


def test_public_endpoints_need_no_credentials(client):
    index = client.get("/")
    assert index.status_code == 200
    assert "POST /deploy" in index.get_json()["endpoints"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "api-reference" in docs.get_data(as_text=True)


def test_health_checks_database_and_broker(client, worker):
    body = client.get("/health").get_json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "healthy", "queue": "healthy", "isolation": "bubblewrap"}
    assert body["uptime"] >= 0


def test_health_is_503_when_the_database_does_not_answer(settings):
    from dataclasses import replace

    from libra_deploy.runtime import Runtime
    from web import create_app

    broken = Runtime.from_settings(
        replace(settings, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    )
    try:
        response = create_app(broken).test_client().get("/health")
    finally:
        broken.close()
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == "unhealthy"
