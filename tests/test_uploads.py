"""Upload by hash: check what is missing, PUT only that, deploy by naming the hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid

import pytest
from sqlalchemy import select

from libra_deploy import uploads
from libra_deploy.db import IN_LIST_LIMIT, transaction
from libra_deploy.models import DeploymentLog
from libra_deploy.runtime import Runtime
from libra_deploy.sources import blob_key
from tests.helpers import make_tenant, wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FolderClient:
    """Deploys a folder the way the user CLI does: hash, check, upload what is missing, deploy."""

    def __init__(self, client, tenant, project_id: str | None = None) -> None:
        self.client = client
        self.tenant = tenant
        self.project_id = project_id or tenant.project_id
        self.uploads = 0

    def check(self, hashes: list[str]):
        return self.client.post(
            f"/projects/{self.project_id}/files/check", json={"hashes": hashes}, headers=self.tenant.headers
        )

    def put(self, digest: str, data: bytes):
        self.uploads += 1
        return self.client.put(
            f"/projects/{self.project_id}/files/{digest}",
            data=data,
            headers={**self.tenant.headers, "Content-Type": "application/octet-stream"},
        )

    def deploy(self, folder: dict[str, bytes]) -> dict:
        digests = {path: sha(data) for path, data in folder.items()}
        response = self.check(sorted(set(digests.values())))
        assert response.status_code == 200, response.get_json()
        by_digest = {digest: folder[path] for path, digest in digests.items()}
        for digest in response.get_json()["missing"]:
            assert self.put(digest, by_digest[digest]).status_code == 200
        body = {
            "projectId": self.project_id,
            "files": [{"path": path, "sha256": digest} for path, digest in digests.items()],
            "replaceFiles": True,
        }
        accepted = self.client.post("/deploy", json=body, headers=self.tenant.headers)
        assert accepted.status_code == 202, accepted.get_json()
        return wait_for(self.client, self.tenant, accepted.get_json()["deploymentId"], timeout=120)


def _publish_line(runtime, deployment_id: str) -> str:
    with runtime.sessions() as session:
        lines = session.scalars(
            select(DeploymentLog.message).where(
                DeploymentLog.deployment_id == deployment_id, DeploymentLog.message.startswith("Published")
            )
        ).all()
    assert len(lines) == 1
    return lines[0]


@pytest.mark.slow
def test_a_500_file_folder_then_one_changed_file_uploads_exactly_one(client, runtime, worker, tenant):
    run = uuid.uuid4().hex
    folder = {f"pages/page-{i:03}.html": f"<p>page {i} of {run}</p>".encode() for i in range(499)}
    folder["index.html"] = f"<h1>{run}</h1>".encode()
    cli = FolderClient(client, tenant)

    first = cli.deploy(folder)

    assert first["status"] == "completed", first
    assert cli.uploads == 500
    assert (
        client.get(f"/sites/{tenant.project_id}/pages/page-042.html").get_data()
        == folder["pages/page-042.html"]
    )

    cli.uploads = 0
    folder["pages/page-042.html"] = b"<p>page 42, edited</p>"
    second = cli.deploy(folder)

    assert second["status"] == "completed", second
    assert cli.uploads == 1
    assert "(1 uploaded, 22 bytes)" in _publish_line(runtime, second["deploymentId"])
    assert (
        client.get(f"/sites/{tenant.project_id}/pages/page-042.html").get_data() == b"<p>page 42, edited</p>"
    )
    assert (
        client.get(f"/sites/{tenant.project_id}/pages/page-041.html").get_data()
        == folder["pages/page-041.html"]
    )
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["fileCount"] == 500


def test_check_answers_the_missing_hashes_in_order_once_each(client, tenant):
    cli = FolderClient(client, tenant)
    known, unknown = f"known {uuid.uuid4()}".encode(), f"unknown {uuid.uuid4()}".encode()
    assert cli.put(sha(known), known).get_json() == {
        "success": True,
        "sha256": sha(known),
        "size": len(known),
    }

    response = cli.check([sha(unknown), sha(known), sha(unknown)])

    assert response.get_json() == {"missing": [sha(unknown)]}


def test_a_check_longer_than_one_in_list_answers_across_every_batch(client, runtime, tenant):
    # Ownership is looked up IN_LIST_LIMIT hashes per statement: owned hashes in every batch,
    # the first and the last ones included, must be left out of the answer.
    contents = [f"file {i} {uuid.uuid4()}".encode() for i in range(2 * IN_LIST_LIMIT + 1)]
    owned = {sha(data): len(data) for i, data in enumerate(contents) if i % 3 != 1}
    for data in contents:
        if sha(data) in owned:
            runtime.store.put(blob_key(sha(data)), data)
    with transaction(runtime.sessions) as session:
        uploads.grant(session, tenant.org_id, owned)

    response = FolderClient(client, tenant).check([sha(data) for data in contents])

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["missing"] == [sha(data) for data in contents if sha(data) not in owned]


def test_files_uploaded_inline_count_as_uploaded(client, worker, tenant):
    content = f"inline {uuid.uuid4()}"
    client.post(
        "/deploy",
        json={"projectId": tenant.project_id, "initFiles": [{"path": "index.html", "content": content}]},
        headers=tenant.headers,
    )
    assert FolderClient(client, tenant).check([sha(content.encode())]).get_json() == {"missing": []}


def test_another_organisation_must_upload_even_what_the_store_holds(client, runtime, tenant):
    secret = f"secret {uuid.uuid4()}".encode()
    assert FolderClient(client, tenant).put(sha(secret), secret).status_code == 200
    assert runtime.store.missing([blob_key(sha(secret))]) == set()
    stranger = make_tenant(runtime)

    assert FolderClient(client, stranger).check([sha(secret)]).get_json() == {"missing": [sha(secret)]}
    body = {"projectId": stranger.project_id, "files": [{"path": "leak.txt", "sha256": sha(secret)}]}
    refused = client.post("/deploy", json=body, headers=stranger.headers)
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "MISSING_FILES"
    assert refused.get_json()["details"] == {"missing": [sha(secret)]}


def test_deploying_hashes_never_uploaded_is_400_naming_them(client, tenant):
    ghosts = sorted(sha(f"ghost {i} {uuid.uuid4()}".encode()) for i in range(5))
    body = {
        "projectId": tenant.project_id,
        "files": [{"path": f"g{i}.txt", "sha256": g} for i, g in enumerate(ghosts)],
    }

    response = client.post("/deploy", json=body, headers=tenant.headers)

    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] == "MISSING_FILES"
    assert error["details"]["missing"] == ghosts
    assert "5 file(s) named by hash are not uploaded" in error["message"]
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["deploymentStatus"] == "idle"


@pytest.mark.parametrize(
    ("files", "init_files", "fragment"),
    [
        ([{"path": "../x", "sha256": "0" * 64}], [], "'..'"),
        (
            [{"path": "a.txt", "sha256": "0" * 64}],
            [{"path": "./a.txt", "content": "x"}],
            "names the same file",
        ),
        ([{"path": "a", "sha256": "0" * 64}, {"path": "a", "sha256": "1" * 64}], [], "names the same file"),
        # The same rule as initFiles (NFKC): a ligature and its letters are one file.
        (
            [{"path": "\ufb01le.txt", "sha256": "0" * 64}, {"path": "file.txt", "sha256": "1" * 64}],
            [],
            "names the same file",
        ),
    ],
)
def test_paths_of_files_by_hash_are_checked_like_inline_ones(client, tenant, files, init_files, fragment):
    body = {"projectId": tenant.project_id, "files": files, "initFiles": init_files}
    response = client.post("/deploy", json=body, headers=tenant.headers)
    assert response.status_code == 400
    assert fragment in response.get_json()["message"]


@pytest.mark.parametrize(
    "body",
    [{"hashes": ["ABC"]}, {"hashes": ["A" * 64]}, {"hashes": "0" * 64}, {}],
)
def test_check_validates_the_hashes(client, tenant, body):
    response = client.post(f"/projects/{tenant.project_id}/files/check", json=body, headers=tenant.headers)
    assert response.status_code == 400
    assert response.get_json()["error"] == "VALIDATION_ERROR"


def test_an_upload_must_match_its_hash(client, tenant):
    cli = FolderClient(client, tenant)
    wrong = cli.put(sha(b"one"), b"two")
    assert wrong.status_code == 400
    assert wrong.get_json()["error"] == "HASH_MISMATCH"
    assert cli.put("not-a-hash", b"x").status_code == 400


def test_files_of_another_organisations_project_are_404(client, runtime, tenant):
    other = make_tenant(runtime)
    cli = FolderClient(client, tenant, project_id=other.project_id)
    assert cli.check([sha(b"x")]).status_code == 404
    assert cli.put(sha(b"x"), b"x").status_code == 404
    assert client.post(f"/projects/{tenant.project_id}/files/check", json={"hashes": []}).status_code == 401


@pytest.fixture
def small_limits_app(runtime):
    from web import create_app

    settings = dataclasses.replace(runtime.settings, max_file_bytes=1024, max_files=3, max_total_bytes=2048)
    return create_app(Runtime(settings, runtime.engine, runtime.sessions, runtime.store, runtime.target))


@pytest.fixture
def small_limits_client(small_limits_app):
    return small_limits_app.test_client()


def test_the_size_limits_apply(small_limits_client, tenant):
    cli = FolderClient(small_limits_client, tenant)
    big = b"x" * 1025
    too_big = cli.put(sha(big), big)
    assert too_big.status_code == 413
    assert too_big.get_json()["details"]["limit"] == "MAX_FILE_BYTES"
    assert cli.check([sha(b"%d" % i) for i in range(4)]).status_code == 413

    pieces = [f"{i} {uuid.uuid4()}".encode() * 20 for i in range(3)]
    for piece in pieces:
        assert cli.put(sha(piece), piece).status_code == 200
    files = [{"path": f"p{i}.txt", "sha256": sha(piece)} for i, piece in enumerate(pieces)]
    total = small_limits_client.post(
        "/deploy", json={"projectId": tenant.project_id, "files": files}, headers=tenant.headers
    )
    assert total.status_code == 413
    assert total.get_json()["details"]["limit"] == "MAX_TOTAL_BYTES"
    count = small_limits_client.post(
        "/deploy",
        json={"projectId": tenant.project_id, "files": files, "initFiles": [{"path": "x", "content": "x"}]},
        headers=tenant.headers,
    )
    assert count.status_code == 413
    assert count.get_json()["details"]["limit"] == "MAX_FILES"


def test_uploads_over_real_http_are_read_whole_and_limited_without_content_length(
    app, small_limits_app, runtime, tenant
):
    import requests

    from web.server import Server

    data = os.urandom(3 * 1024 * 1024 + 17)
    over = os.urandom(2048)
    servers = [Server(app, "127.0.0.1", 0), Server(small_limits_app, "127.0.0.1", 0)]
    for server in servers:
        server.start()
    try:
        base, small = (f"http://127.0.0.1:{s.port}/projects/{tenant.project_id}/files" for s in servers)
        stored = requests.put(f"{base}/{sha(data)}", data=data, headers=tenant.headers, timeout=60)
        # Without Content-Length (chunked), the body is read whole, and refused past the limit.
        chunked = requests.put(
            f"{base}/{sha(data)}", data=iter([data[:1024], data[1024:]]), headers=tenant.headers, timeout=60
        )
        refused = requests.put(
            f"{small}/{sha(over)}", data=iter([over[:1000], over[1000:]]), headers=tenant.headers, timeout=60
        )
    finally:
        for server in servers:
            server.stop()
    assert stored.status_code == 200, stored.text
    assert stored.json()["size"] == len(data)
    assert runtime.store.get(blob_key(sha(data))) == data
    assert chunked.status_code == 200, chunked.text
    assert refused.status_code == 413
    assert refused.json()["details"]["limit"] == "MAX_FILE_BYTES"
    assert runtime.store.missing([blob_key(sha(over))]) == {blob_key(sha(over))}
