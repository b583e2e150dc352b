"""Hostile input to POST /deploy: every case is refused with a clear 4xx and leaves nothing behind."""

from __future__ import annotations

import base64
import json
import unicodedata
import uuid

import pytest
from sqlalchemy import func, select

from libra_deploy.models import (
    Deployment,
    DeploymentLog,
    Project,
    ProjectVariable,
    QuotaLedger,
    Webhook,
    WebhookDelivery,
)
from libra_deploy.sources import blob_key, sha256_hex
from tests.helpers import custom_app, make_tenant, queued_deployment

#: Small limits, so that every limit can be crossed with a small request.
LIMITS = {
    "max_files": 4,
    "max_file_bytes": 64,
    "max_total_bytes": 120,
    "max_path_length": 40,
    "max_path_depth": 3,
    "max_history_messages": 2,
    "max_history_message_bytes": 32,
    "max_request_bytes": 4096,
}


def _file(path: object, content: str = "x", **extra: object) -> dict:
    return {"path": path, "content": content, **extra}


NFC = unicodedata.normalize("NFC", "café.html")
NFD = unicodedata.normalize("NFD", "café.html")

#: (name, extra initFiles, extra body fields, status, error code, the limit or rule named in details)
CASES = [
    # Limits
    ("too many files", [_file(f"f{i}.txt") for i in range(4)], {}, 413, "PAYLOAD_TOO_LARGE", "MAX_FILES"),
    ("a file too large", [_file("big.txt", "x" * 65)], {}, 413, "PAYLOAD_TOO_LARGE", "MAX_FILE_BYTES"),
    (
        "a base64 file too large once decoded",
        [_file("big.bin", base64.b64encode(b"\0" * 65).decode(), encoding="base64")],
        {},
        413,
        "PAYLOAD_TOO_LARGE",
        "MAX_FILE_BYTES",
    ),
    (
        "too many bytes in all",
        [_file("a.txt", "a" * 60), _file("b.txt", "b" * 60)],
        {},
        413,
        "PAYLOAD_TOO_LARGE",
        "MAX_TOTAL_BYTES",
    ),
    ("a path too long", [_file("d/" + "x" * 40 + ".html")], {}, 400, "VALIDATION_ERROR", "MAX_PATH_LENGTH"),
    ("a path too deep", [_file("a/b/c/d.html")], {}, 400, "VALIDATION_ERROR", "MAX_PATH_DEPTH"),
    (
        "too many history messages",
        [],
        {"historyMessages": [{"role": "user", "content": "hi"}] * 3},
        413,
        "PAYLOAD_TOO_LARGE",
        "MAX_HISTORY_MESSAGES",
    ),
    (
        "a history message too large",
        [],
        {"historyMessages": [{"role": "user", "content": "x" * 33}]},
        413,
        "PAYLOAD_TOO_LARGE",
        "MAX_HISTORY_MESSAGE_BYTES",
    ),
    (
        "a request body too large",
        [_file(f"p{i}.txt", "y" * 60) for i in range(3)],
        {"padding": "z" * 5000},
        413,
        "PAYLOAD_TOO_LARGE",
        "MAX_REQUEST_BYTES",
    ),
    # Paths
    ("an absolute path", [_file("/etc/passwd")], {}, 400, "VALIDATION_ERROR", None),
    ("a drive letter", [_file("C:/Windows/win.ini")], {}, 400, "VALIDATION_ERROR", None),
    ("a parent directory", [_file("../escape.html")], {}, 400, "VALIDATION_ERROR", None),
    ("a parent directory inside", [_file("a/../../escape.html")], {}, 400, "VALIDATION_ERROR", None),
    ("a backslash", [_file("a\\..\\b.html")], {}, 400, "VALIDATION_ERROR", None),
    ("a NUL", [_file("bad\x00name.html")], {}, 400, "VALIDATION_ERROR", None),
    ("a control character", [_file("bad\x1bname.html")], {}, 400, "VALIDATION_ERROR", None),
    ("DEL", [_file("bad\x7fname.html")], {}, 400, "VALIDATION_ERROR", None),
    ("a C1 control character", [_file("bad\x85name.html")], {}, 400, "VALIDATION_ERROR", None),
    ("a right-to-left override", [_file("invoice\u202egpj.exe")], {}, 400, "VALIDATION_ERROR", None),
    ("an empty path", [_file("")], {}, 400, "VALIDATION_ERROR", None),
    ("a path naming no file", [_file("./")], {}, 400, "VALIDATION_ERROR", None),
    ("a path that is not a string", [_file(42)], {}, 400, "VALIDATION_ERROR", None),
    (
        "paths equal once slashes are normalised",
        [_file("a//b.html"), _file("a/b.html")],
        {},
        400,
        "VALIDATION_ERROR",
        "collision",
    ),
    (
        "paths equal once dots are normalised",
        [_file("./a.html"), _file("a.html")],
        {},
        400,
        "VALIDATION_ERROR",
        "collision",
    ),
    ("NFC and NFD spellings of one name", [_file(NFC), _file(NFD)], {}, 400, "VALIDATION_ERROR", "collision"),
    (
        "a ligature and its letters",
        [_file("\ufb01le.html"), _file("file.html")],
        {},
        400,
        "VALIDATION_ERROR",
        "collision",
    ),
    ("full-width letters", [_file("\uff41.html"), _file("a.html")], {}, 400, "VALIDATION_ERROR", "collision"),
    ("a file that is also a directory", [_file("a"), _file("a/b.html")], {}, 400, "VALIDATION_ERROR", None),
    # Contents and other fields
    (
        "base64 that does not decode",
        [_file("img.png", "not base64!!", encoding="base64")],
        {},
        400,
        "VALIDATION_ERROR",
        None,
    ),
    (
        "base64 with a bad length",
        [_file("img.png", "abc", encoding="base64")],
        {},
        400,
        "VALIDATION_ERROR",
        None,
    ),
    ("an unknown encoding", [_file("a.txt", encoding="latin-1")], {}, 400, "VALIDATION_ERROR", None),
    ("a file without content", [{"path": "a.txt"}], {}, 400, "VALIDATION_ERROR", None),
    (
        "a custom domain that is an IP address",
        [],
        {"customDomain": "10.0.0.1"},
        400,
        "INVALID_DOMAIN",
        "ip-address",
    ),
    (
        "a custom domain under the platform",
        [],
        {"customDomain": "x.pages.dev"},
        400,
        "INVALID_DOMAIN",
        "platform",
    ),
    ("the organisation of someone else", [], {"orgId": "org_someone_else"}, 403, "ORG_MISMATCH", None),
]


@pytest.fixture(scope="module")
def limited_app(settings):
    with custom_app(settings, **LIMITS) as app:
        yield app


@pytest.mark.parametrize(
    ("init_files", "fields", "status", "code", "named"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_hostile_input_is_refused_and_nothing_is_written(
    limited_app, runtime, init_files, fields, status, code, named
):
    tenant = make_tenant(runtime)
    # A harmless file rides along: it must not be stored either.
    marker = f"harmless {uuid.uuid4()}"
    body = {"projectId": tenant.project_id, "initFiles": [_file("ok.html", marker), *init_files], **fields}
    response = limited_app.test_client().post("/deploy", json=body, headers=tenant.headers)

    error = _refusal(response, status, code)
    if named is not None:
        details = error.get("details") or {}
        assert named in (details.get("limit"), details.get("rule")), error
        if details.get("limit"):
            assert named in error["message"]
    _assert_nothing_deployed(limited_app, runtime, tenant, marker)


def _refusal(response, status: int, code: str) -> dict:
    """The error body of a refused request, checked for the status, the shape and the code."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    error = response.get_json()
    assert error["success"] is False
    assert error["error"] == code, error
    assert error["message"]
    return error


def _assert_nothing_deployed(app, runtime, tenant, marker: str) -> None:
    """No blob of the request's harmless file, no deployment, no quota charge, the project idle."""
    key = blob_key(sha256_hex(marker.encode()))
    assert runtime.store.missing([key]) == {key}
    with runtime.sessions() as session:
        rows = session.scalar(
            select(func.count()).select_from(Deployment).where(Deployment.project_id == tenant.project_id)
        )
        charges = session.scalar(
            select(func.count()).select_from(QuotaLedger).where(QuotaLedger.org_id == tenant.org_id)
        )
    assert (rows, charges) == (0, 0)
    project = app.test_client().get(f"/projects/{tenant.project_id}", headers=tenant.headers)
    assert project.get_json()["deploymentStatus"] == "idle"


def test_a_request_within_every_limit_is_accepted(limited_app, runtime):
    tenant = make_tenant(runtime)
    files = [
        _file("index.html", "x" * 64),
        _file("a/b/c.txt", "y" * 50),
        _file("img.bin", base64.b64encode(b"\1\2\3").decode() + "\n", encoding="base64"),
        _file(NFD),
    ]
    body = {
        "projectId": tenant.project_id,
        "initFiles": files,
        "historyMessages": [{"role": "user", "content": "x" * 32}] * 2,
    }
    response = limited_app.test_client().post("/deploy", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.get_json()
    # The stored path is the NFC form.
    with runtime.sessions() as session:
        deployment = session.get(Deployment, response.get_json()["deploymentId"])
        assert NFC in deployment.request["files"]


#: Pairs of paths that name one file once normalised (NFKC): refused in ``files`` (by hash) as in
#: ``initFiles``, and across the two. (name, paths in files, paths in initFiles)
FILES_COLLISIONS = [
    ("a ligature and its letters in files", ["\ufb01le.html", "file.html"], []),
    ("full-width letters in files", ["\uff41.html", "a.html"], []),
    ("a ligature in initFiles and its letters in files", ["file.html"], ["\ufb01le.html"]),
    ("full-width letters in files and plain ones in initFiles", ["\uff41.html"], ["a.html"]),
]


@pytest.mark.parametrize(
    ("by_hash", "inline"), [case[1:] for case in FILES_COLLISIONS], ids=[case[0] for case in FILES_COLLISIONS]
)
def test_files_by_hash_follow_the_collision_rule_of_init_files(limited_app, runtime, by_hash, inline):
    tenant = make_tenant(runtime)
    client = limited_app.test_client()
    marker = f"harmless {uuid.uuid4()}"
    files = []
    for index, path in enumerate(by_hash):
        # Uploaded first, so that the deploy would otherwise be accepted.
        data = f"{index} {uuid.uuid4()}".encode()
        uploaded = client.put(
            f"/projects/{tenant.project_id}/files/{sha256_hex(data)}", data=data, headers=tenant.headers
        )
        assert uploaded.status_code == 200, uploaded.get_json()
        files.append({"path": path, "sha256": sha256_hex(data)})
    body = {
        "projectId": tenant.project_id,
        "initFiles": [_file("ok.html", marker), *(_file(path) for path in inline)],
        "files": files,
    }
    response = client.post("/deploy", json=body, headers=tenant.headers)

    error = _refusal(response, 400, "VALIDATION_ERROR")
    assert error["details"]["rule"] == "collision", error
    assert error["details"]["field"] == f"files[{len(by_hash) - 1}].path", error
    assert "names the same file" in error["message"]
    _assert_nothing_deployed(limited_app, runtime, tenant, marker)


# Hostile input beyond POST /deploy: ids, free text and numbers that must never reach the database
# as they are (PostgreSQL refuses NUL in text; neither database takes an integer past 64 bits).


def _cursor(created_at: str, deployment_id: str) -> str:
    """A history cursor as a client could forge one (the service's own encoding)."""
    raw = json.dumps([created_at, deployment_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


HOOK = "http://127.0.0.1:9/hook"
NUL_IN_CURSOR = _cursor("2026-11-28T10:30:00+00:00", "dep_\x00")
#: A time that has no UTC equivalent: year 10000 once converted.
OFF_THE_CALENDAR = _cursor("9999-12-31T23:59:59-05:00", "dep_01jdq3v5y8m6c0d2rj6x1b7k9t")

#: (name, method, path, JSON body, headers, status, error code, the field or header named in details)
#: ``{project}`` and ``{deployment}`` are the tenant's, which has a webhook, a variable and a queued
#: deployment: an unknown or implausible id is the 404 of a missing one, bad text or numbers a 400.
REQUEST_CASES = [
    (
        "a NUL in the project id of a promote",
        "POST",
        "/projects/prj_%00x/promote",
        {"deploymentId": "dep_x"},
        {},
        404,
        "PROJECT_NOT_FOUND",
        None,
    ),
    (
        "a NUL in the project id of a rollback",
        "POST",
        "/projects/prj_%00x/rollback",
        {},
        {},
        404,
        "PROJECT_NOT_FOUND",
        None,
    ),
    (
        "a NUL in the webhook id of a delete",
        "DELETE",
        "/projects/{project}/webhooks/whk_%00",
        None,
        {},
        404,
        "WEBHOOK_NOT_FOUND",
        None,
    ),
    (
        "a NUL in the webhook id of its deliveries",
        "GET",
        "/projects/{project}/webhooks/whk_%00/deliveries",
        None,
        {},
        404,
        "WEBHOOK_NOT_FOUND",
        None,
    ),
    (
        "a NUL in the name of a variable to delete",
        "DELETE",
        "/projects/{project}/env/A%00B",
        None,
        {},
        404,
        "VARIABLE_NOT_FOUND",
        None,
    ),
    (
        "a NUL in a webhook description",
        "POST",
        "/projects/{project}/webhooks",
        {"url": HOOK, "description": "nightly\x00builds"},
        {},
        400,
        "VALIDATION_ERROR",
        "description",
    ),
    (
        "a NUL in a webhook URL",
        "POST",
        "/projects/{project}/webhooks",
        {"url": HOOK + "/\x00"},
        {},
        400,
        "VALIDATION_ERROR",
        "url",
    ),
    (
        "a NUL in the deployment id of a history cursor",
        "GET",
        f"/projects/{{project}}/deployments?cursor={NUL_IN_CURSOR}",
        None,
        {},
        400,
        "INVALID_CURSOR",
        "cursor",
    ),
    (
        "a history cursor time outside the calendar in UTC",
        "GET",
        f"/projects/{{project}}/deployments?cursor={OFF_THE_CALENDAR}",
        None,
        {},
        400,
        "INVALID_CURSOR",
        "cursor",
    ),
    (
        "a log cursor of 10**23",
        "GET",
        f"/deployments/{{deployment}}/logs?cursor={10**23}",
        None,
        {},
        400,
        "VALIDATION_ERROR",
        "cursor",
    ),
    (
        "a log cursor one past 64 bits",
        "GET",
        f"/deployments/{{deployment}}/logs?cursor={2**63}",
        None,
        {},
        400,
        "VALIDATION_ERROR",
        "cursor",
    ),
    (
        "a superscript two as Last-Event-ID",
        "GET",
        "/deployments/{deployment}/logs?follow=1",
        None,
        {"Last-Event-ID": "\u00b2"},
        400,
        "VALIDATION_ERROR",
        "Last-Event-ID",
    ),
    (
        "Arabic-Indic digits as Last-Event-ID",
        "GET",
        "/deployments/{deployment}/logs?follow=1",
        None,
        {"Last-Event-ID": "\u0661\u0662"},
        400,
        "VALIDATION_ERROR",
        "Last-Event-ID",
    ),
    (
        "a Last-Event-ID of 10**23",
        "GET",
        "/deployments/{deployment}/logs?follow=1",
        None,
        {"Last-Event-ID": str(10**23)},
        400,
        "VALIDATION_ERROR",
        "Last-Event-ID",
    ),
]


@pytest.fixture
def furnished(app, runtime):
    """A tenant whose project has a webhook, a build variable and a queued deployment."""
    tenant = make_tenant(runtime)
    client = app.test_client()
    hook = client.post(f"/projects/{tenant.project_id}/webhooks", json={"url": HOOK}, headers=tenant.headers)
    assert hook.status_code == 201, hook.get_json()
    variable = client.put(f"/projects/{tenant.project_id}/env/A", json={"value": "a"}, headers=tenant.headers)
    assert variable.status_code == 200, variable.get_json()
    return tenant, queued_deployment(runtime, tenant)


def _footprint(runtime, tenant) -> tuple:
    """What a request could have changed for the tenant: its project's row and its rows elsewhere."""
    project_id = tenant.project_id
    with runtime.sessions() as session:
        project = session.get(Project, project_id)
        assert project is not None
        counts = [
            session.scalar(select(func.count()).select_from(model).where(condition))
            for model, condition in (
                (Deployment, Deployment.project_id == project_id),
                (Webhook, Webhook.project_id == project_id),
                (ProjectVariable, ProjectVariable.project_id == project_id),
                (QuotaLedger, QuotaLedger.org_id == tenant.org_id),
                (
                    DeploymentLog,
                    DeploymentLog.deployment_id.in_(
                        select(Deployment.id).where(Deployment.project_id == project_id)
                    ),
                ),
                (
                    WebhookDelivery,
                    WebhookDelivery.webhook_id.in_(
                        select(Webhook.id).where(Webhook.project_id == project_id)
                    ),
                ),
            )
        ]
        return (project.deployment_status, project.production_deployment_id, project.updated_at, *counts)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code", "named"),
    [case[1:] for case in REQUEST_CASES],
    ids=[case[0] for case in REQUEST_CASES],
)
def test_hostile_ids_text_and_numbers_are_refused_and_nothing_is_written(
    app, runtime, furnished, method, path, body, headers, status, code, named
):
    tenant, deployment_id = furnished
    before = _footprint(runtime, tenant)
    url = path.format(project=tenant.project_id, deployment=deployment_id)
    response = app.test_client().open(url, method=method, json=body, headers={**tenant.headers, **headers})

    error = _refusal(response, status, code)
    if named is not None:
        details = error.get("details") or {}
        assert named in (details.get("field"), details.get("header")) or named in details, error
    assert _footprint(runtime, tenant) == before


def test_the_largest_line_id_is_a_valid_cursor_and_last_event_id(app, runtime, furnished):
    tenant, deployment_id = furnished
    client = app.test_client()
    url = f"/deployments/{deployment_id}/logs"
    page = client.get(f"{url}?cursor={2**63 - 1}", headers=tenant.headers)
    assert page.status_code == 200, page.get_json()
    assert page.get_json()["lines"] == []

    stream = client.get(
        f"{url}?follow=1", headers={**tenant.headers, "Last-Event-ID": str(2**63 - 1)}, buffered=False
    )
    try:
        assert stream.status_code == 200
        chunks = stream.iter_encoded()
        assert next(chunks).startswith(b"retry:")
        # The first poll reads the lines after that id from the database: none, then the status.
        first = next(chunks)
        assert b"event: status" in first
        assert b"event: log" not in first
    finally:
        stream.close()
