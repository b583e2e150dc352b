"""The whole service (API, real worker, real database and broker) on the S3 and Cloudflare Pages targets.

Each test builds a runtime from the environment plus the provider settings, makes the worker use it
for the length of the test, and talks to an app built on it; the S3 API is moto's server over HTTP
and the Cloudflare API the fake on loopback.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import requests

from libra_deploy.models import DeadLetter
from tests.fake_cloudflare import ACCOUNT, TOKEN, ZONE, FakeCloudflare
from tests.helpers import cli, deploy, make_tenant, service_on, wait_for, wait_for_step
from tests.s3_server import S3Server, refused_url


@pytest.fixture(scope="module")
def s3():
    server = S3Server.start()
    yield server
    server.stop()


BUILT_SITE = {
    "package.json": json.dumps({"name": "s", "scripts": {"build": "node build.js"}}),
    "build.js": (
        "const fs = require('fs'); fs.mkdirSync('dist/assets', {recursive: true});"
        "fs.writeFileSync('dist/index.html', '<h1>built</h1>');"
        "fs.writeFileSync('dist/assets/app-3f9a1c2b.js', 'console.log(1)');"
    ),
}


@pytest.mark.stack
def test_the_service_on_the_s3_target_and_store(s3, runtime, worker):
    env = s3.env(OBJECT_STORE="s3", DEPLOY_TARGET="s3")
    env["SITES_PUBLIC_URL"] = f"{s3.url}/{env['SITES_BUCKET']}"
    with service_on(env) as (rt, client):
        tenant = make_tenant(rt)
        first = wait_for(client, tenant, deploy(client, tenant, BUILT_SITE), timeout=120)
        assert first["status"] == "completed", first

        page = client.get(f"/sites/{tenant.project_id}/")
        assert page.get_data() == b"<h1>built</h1>"
        asset = client.get(f"/sites/{tenant.project_id}/assets/app-3f9a1c2b.js")
        assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        # The bucket itself serves the deployment under its own immutable prefix.
        assert (
            first["targetUrl"]
            == f"{env['SITES_PUBLIC_URL']}/sites/{tenant.project_id}/{first['deploymentId']}/index.html"
        )
        # Logs and artifacts went to their buckets and download through presigned URLs.
        log = requests.get(first["logUrl"], timeout=10)
        assert log.status_code == 200
        assert "Publishing build output" in log.text
        artifact = requests.get(first["artifactUrl"], timeout=10)
        with tarfile.open(fileobj=io.BytesIO(artifact.content), mode="r:gz") as tar:
            assert sorted(tar.getnames()) == ["assets/app-3f9a1c2b.js", "index.html"]

        s3.start_recording()
        # The same files again: the store has every blob, the target every built file.
        second = wait_for(client, tenant, deploy(client, tenant, BUILT_SITE), timeout=120)
        assert second["status"] == "completed", second
        assert any("(0 uploaded, 0 bytes)" in line for line in second["logs"])
        assert s3.uploads(env["ARTIFACTS_BUCKET"], "blobs/") == []
        # Counted by the server: no file written or copied, only the new manifest, the record that it
        # shares the first deployment's files, and the pointer switch.
        writes = s3.uploads(env["SITES_BUCKET"], f"sites/{tenant.project_id}/")
        prefix = f"{env['SITES_BUCKET']}/sites/{tenant.project_id}"
        assert sorted(writes) == [
            f"{prefix}/_deployments/{first['deploymentId']}.sharers/{second['deploymentId']}",
            f"{prefix}/_deployments/{second['deploymentId']}.json",
            f"{prefix}/live",
        ]
        copies = [r for r in s3.recorded() if "x-amz-copy-source" in {h.lower() for h in r["headers"]}]
        assert copies == []
        assert second["targetUrl"] == first["targetUrl"]
        assert client.get(f"/sites/{tenant.project_id}/").get_data() == b"<h1>built</h1>"


def test_the_service_on_cloudflare_pages(runtime, worker):
    fake = FakeCloudflare().start()
    env = {
        "DEPLOY_TARGET": "cloudflare-pages",
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
        "CLOUDFLARE_API_TOKEN": TOKEN,
        "CLOUDFLARE_API_BASE_URL": fake.base_url,
        "CLOUDFLARE_ZONE_ID": ZONE,
    }
    try:
        with service_on(env) as (rt, client):
            tenant = make_tenant(rt)
            files = {"index.html": "<h1>on pages</h1>", "about.html": "about"}
            status = wait_for(
                client, tenant, deploy(client, tenant, files, customDomain="www.example.io"), timeout=120
            )
            assert status["status"] == "completed", status
            assert fake.problems == []
            (pages_deployment,) = fake.deployments.values()
            assert status["targetUrl"] == pages_deployment["url"]
            assert set(pages_deployment["manifest"]) == {"/index.html", "/about.html"}
            assert client.get(f"/sites/{tenant.project_id}/").get_data() == b"<h1>on pages</h1>"
            assert any(
                "Custom domain www.example.io at the cloudflare-pages target: pending" in line
                for line in status["logs"]
            )
            assert [r["name"] for r in fake.dns_records] == ["www.example.io"]
            # No presigning on the local store: no download URLs.
            assert "logUrl" not in status
    finally:
        fake.stop()


def test_a_refusing_s3_endpoint_ends_in_the_dead_letter_queue_and_its_replay_completes(s3, runtime, worker):
    endpoint = refused_url()
    env = s3.env(DEPLOY_TARGET="s3", S3_ENDPOINT_URL=endpoint)
    with service_on(env) as (rt, client):
        tenant = make_tenant(rt)
        deployment_id = deploy(client, tenant, {"index.html": "x"})
        status = wait_for(client, tenant, deployment_id, timeout=180)
        wait_for_step(client, tenant, deployment_id, "cleanup", "completed")

        assert status["status"] == "failed", status
        assert status["errorCode"] == "PROVIDER_UNAVAILABLE"
        assert status["steps"]["deploy"]["status"] == "failed"
        # Retryable: the step ran three times (the first attempt and two retries) before giving up.
        assert status["steps"]["deploy"]["attempts"] == 3
        assert "test-secret-access-key" not in json.dumps(status)

        with rt.sessions() as session:
            (letter,) = session.query(DeadLetter).filter_by(deployment_id=deployment_id).all()
        assert letter.step == "deploy"
        assert letter.message["error"]["code"] == "PROVIDER_UNAVAILABLE"

        # The endpoint answers again (a real S3 server on the same address): the replay resumes the
        # same deployment at its deploy step; the worker, which started while the endpoint was
        # away, creates its bucket and publishes.
        revived = S3Server.start(port=int(endpoint.rsplit(":", 1)[1]))
        try:
            replayed = cli("dlq", "replay", letter.id)
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.strip() == deployment_id
            again = wait_for(client, tenant, deployment_id, timeout=120)
            assert again["status"] == "completed", again
            assert again["steps"]["build"] == status["steps"]["build"]  # not built again
            assert client.get(f"/sites/{tenant.project_id}/").get_data() == b"x"
        finally:
            revived.stop()


def test_a_request_that_needs_a_refusing_store_is_503(s3, runtime):
    env = s3.env(OBJECT_STORE="s3", S3_ENDPOINT_URL=refused_url())
    with service_on(env) as (rt, client):
        tenant = make_tenant(rt)
        response = client.post(
            "/deploy",
            json={"projectId": tenant.project_id, "initFiles": [{"path": "index.html", "content": "x"}]},
            headers=tenant.headers,
        )
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == "PROVIDER_UNAVAILABLE"
    assert "test-secret-access-key" not in body["message"]
