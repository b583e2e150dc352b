"""Hostile input to POST /deploy: every case is refused with a clear 4xx and leaves nothing behind."""

from __future__ import annotations

import base64
import unicodedata
import uuid

import pytest
from sqlalchemy import func, select

from libra_deploy.models import Deployment, QuotaLedger
from libra_deploy.sources import blob_key, sha256_hex
from tests.helpers import custom_app, make_tenant

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

    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    error = response.get_json()
    assert error["success"] is False
    assert error["error"] == code, error
    assert error["message"]
    if named is not None:
        details = error.get("details") or {}
        assert named in (details.get("limit"), details.get("rule")), error
        if details.get("limit"):
            assert named in error["message"]
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
    project = limited_app.test_client().get(f"/projects/{tenant.project_id}", headers=tenant.headers)
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
