"""_headers and _redirects on the S3 and Cloudflare Pages targets, and garbage collection on both.

The S3 API is moto's server over HTTP on loopback, the Cloudflare API the fake on loopback; the
pipeline tests run the whole service (real worker, database and broker) on them.
"""

from __future__ import annotations

import dataclasses
import hashlib

import boto3
import pytest

from libra_deploy.adapters.local_store import LocalObjectStore
from libra_deploy.adapters.s3_target import S3Target
from libra_deploy.config import Settings
from libra_deploy.models import new_id
from libra_deploy.ports import Manifest, ObjectStore
from libra_deploy.retention import collect_garbage
from libra_deploy.runtime import Runtime
from libra_deploy.sources import blob_key, sha256_hex
from libra_deploy.steps.cleanup import log_key
from tests.fake_cloudflare import ACCOUNT, TOKEN, FakeCloudflare
from tests.helpers import deploy_completed, make_tenant, service_on
from tests.s3_server import S3Server

HEADERS = """\
/*
  X-Frame-Options: DENY
/assets/*
  Cache-Control: public, max-age=600
/docs/
  Content-Language: fr
/*.pdf
  Content-Disposition: attachment
  ! X-Frame-Options
https://:sub.example.io/*
  X-Sub: :sub
"""
REDIRECTS = """\
/old.html /new.html 301
/moved /docs/ 308
/twitter https://twitter.com/example 301
/temporary /new.html 302
/blog/* /posts/:splat 301
/app/* /index.html 200
"""
SITE = {
    "index.html": b"home",
    "new.html": b"new",
    "old.html": b"old",
    "docs/index.html": b"docs",
    "assets/app.js": b"app()",
    "guide.pdf": b"%PDF-1.4",
    "_headers": HEADERS.encode(),
    "_redirects": REDIRECTS.encode(),
}


@pytest.fixture(scope="module")
def s3():
    server = S3Server.start()
    yield server
    server.stop()


def _raw_client(s3: S3Server):
    return boto3.client(
        "s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )


def _site(store: ObjectStore, files: dict[str, bytes]) -> Manifest:
    manifest: Manifest = {}
    for path, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        store.put(f"blobs/{sha}", data)
        manifest[path] = {"sha256": sha, "size": len(data)}
    return manifest


# S3: what the objects carry ------------------------------------------------------------------------


def test_s3_objects_carry_the_headers_and_permanent_redirects_that_map(s3, tmp_path):
    env = s3.env(DEPLOY_TARGET="s3")
    target = S3Target.from_settings(Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path), **env}))
    store = LocalObjectStore(tmp_path / "objects")
    project, first, second = new_id("prj"), new_id("dep"), new_id("dep")
    manifest = _site(store, SITE)
    raw = _raw_client(s3)

    published = target.publish(project, first, manifest, store)

    def head(deployment: str, key: str) -> dict:
        found = raw.head_object(Bucket=target.bucket, Key=f"sites/{project}/{deployment}/{key}")
        names = (
            "ContentType",
            "CacheControl",
            "ContentLanguage",
            "ContentDisposition",
            "WebsiteRedirectLocation",
        )
        return {name: found[name] for name in names if name in found}

    prefix = f"/sites/{project}/{first}/"
    assert head(first, "index.html") == {
        "ContentType": "text/html; charset=utf-8",
        "CacheControl": "public, max-age=0, must-revalidate",
    }
    # /assets/* sets Cache-Control; /docs/ is answered by docs/index.html; /*.pdf sets a disposition.
    assert head(first, "assets/app.js")["CacheControl"] == "public, max-age=600"
    assert head(first, "docs/index.html")["ContentLanguage"] == "fr"
    assert head(first, "guide.pdf")["ContentDisposition"] == "attachment"
    # Rules come before files: old.html's object redirects, into the deployment's own prefix.
    assert head(first, "old.html")["WebsiteRedirectLocation"] == f"{prefix}new.html"
    assert head(first, "moved")["WebsiteRedirectLocation"] == f"{prefix}docs/"
    assert head(first, "twitter")["WebsiteRedirectLocation"] == "https://twitter.com/example"
    for untranslated in ("temporary", "blog", "app"):
        with pytest.raises(raw.exceptions.ClientError):
            raw.head_object(Bucket=target.bucket, Key=f"sites/{project}/{first}/{untranslated}")
    warnings = "\n".join(published.warnings)
    assert "X-Frame-Options cannot be set on S3 objects" in warnings
    assert "rules for absolute URLs (line 10) are not translated" in warnings
    assert "temporary redirects of /temporary (302) are not translated" in warnings
    assert "rules with splats or placeholders (/blog/*, /app/*) cannot be S3 redirect objects" in warnings
    assert len(published.warnings) == 4

    # A redeploy that changes one file uploads it and copies the other objects inside the bucket,
    # with the same translation. (An unchanged one would share the first one's objects: test_s3.py.)
    target.activate(project, first)
    s3.start_recording()
    changed = {**manifest, **_site(store, {"guide.pdf": b"%PDF-1.7"})}
    again = target.publish(project, second, changed, store)
    assert again.uploaded_files == 1
    assert sorted(s3.uploads(target.bucket, f"sites/{project}/{second}/")) == [
        f"{target.bucket}/sites/{project}/{second}/{name}" for name in ("guide.pdf", "moved", "twitter")
    ]
    assert head(second, "guide.pdf")["ContentDisposition"] == "attachment"
    assert head(second, "assets/app.js")["CacheControl"] == "public, max-age=600"
    assert head(second, "old.html")["WebsiteRedirectLocation"] == f"/sites/{project}/{second}/new.html"


def test_a_site_without_rule_files_publishes_as_before(s3, tmp_path):
    env = s3.env(DEPLOY_TARGET="s3")
    target = S3Target.from_settings(Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path), **env}))
    store = LocalObjectStore(tmp_path / "objects")
    published = target.publish(new_id("prj"), new_id("dep"), _site(store, {"index.html": b"x"}), store)
    assert published.warnings == ()


# Through the whole service: /sites/ applies every rule, whatever the target ---------------------

SERVED = {name: data.decode() for name, data in SITE.items()}


def _check_served_rules(client, project_id: str) -> None:
    site = f"/sites/{project_id}"
    home = client.get(f"{site}/")
    assert home.get_data() == b"home"
    assert home.headers["X-Frame-Options"] == "DENY"
    pdf = client.get(f"{site}/guide.pdf")
    assert pdf.headers["Content-Disposition"] == "attachment"
    assert "X-Frame-Options" not in pdf.headers
    assert client.get(f"{site}/assets/app.js").headers["Cache-Control"] == "public, max-age=600"
    temporary = client.get(f"{site}/temporary")
    assert (temporary.status_code, temporary.headers["Location"]) == (302, f"{site}/new.html")
    splat = client.get(f"{site}/blog/2026/hello")
    assert (splat.status_code, splat.headers["Location"]) == (301, f"{site}/posts/2026/hello")
    rewrite = client.get(f"{site}/app/settings")
    assert (rewrite.status_code, rewrite.get_data()) == (200, b"home")
    assert client.get(f"{site}/old.html").status_code == 301
    # The rule files are never served (a deep link without extension gets the app, as on Pages).
    assert client.get(f"{site}/_headers").get_data() == b"home"


def test_sites_applies_the_rules_of_a_deployment_on_s3_and_its_log_names_what_s3_cannot(s3, runtime, worker):
    env = s3.env(OBJECT_STORE="s3", DEPLOY_TARGET="s3")
    with service_on(env) as (rt, client):
        tenant = make_tenant(rt)
        deployment_id = deploy_completed(client, tenant, SERVED)
        status = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()

        _check_served_rules(client, tenant.project_id)
        assert any(
            line.startswith("_redirects: temporary redirects of /temporary (302)") for line in status["logs"]
        )
        assert any("X-Frame-Options cannot be set on S3 objects" in line for line in status["logs"])


def test_sites_applies_the_rules_of_a_deployment_on_pages_which_gets_both_files(runtime, worker):
    fake = FakeCloudflare().start()
    env = {
        "DEPLOY_TARGET": "cloudflare-pages",
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
        "CLOUDFLARE_API_TOKEN": TOKEN,
        "CLOUDFLARE_API_BASE_URL": fake.base_url,
    }
    try:
        with service_on(env) as (rt, client):
            tenant = make_tenant(rt)
            deploy_completed(client, tenant, SERVED)

            _check_served_rules(client, tenant.project_id)
            assert fake.problems == []
            (pages,) = fake.deployments.values()
            # Pages runs both files itself: they go as the parts wrangler sends, not as assets.
            assert pages["parts"] == {"_headers": SITE["_headers"], "_redirects": SITE["_redirects"]}
            assert "/_headers" not in pages["manifest"]
    finally:
        fake.stop()


# Garbage collection on both targets ---------------------------------------------------------------


def _collector(runtime: Runtime) -> Runtime:
    """The runtime's database, store and target, keeping one deployment per project, without grace."""
    changed = dataclasses.replace(runtime.settings, retention_keep=1, gc_blob_grace_s=0)
    return Runtime(changed, runtime.engine, runtime.sessions, runtime.store, runtime.target)


def _versions(client, tenant, run: str) -> list[str]:
    return [
        deploy_completed(
            client, tenant, {"index.html": f"v{n}", f"only-{n}.txt": f"{run} {n}"}, replaceFiles=True
        )
        for n in (1, 2, 3)
    ]


def test_gc_on_s3_removes_the_old_prefixes_and_their_blobs(s3, runtime, worker):
    env = s3.env(OBJECT_STORE="s3", DEPLOY_TARGET="s3")
    raw = _raw_client(s3)
    with service_on(env) as (rt, client):
        tenant = make_tenant(rt)
        run = new_id("run")
        first, second, third = _versions(client, tenant, run)

        def keys(bucket: str, prefix: str) -> set[str]:
            listed = raw.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            return {item["Key"] for item in listed}

        assert keys(env["SITES_BUCKET"], f"sites/{tenant.project_id}/{first}/")

        report = collect_garbage(_collector(rt))

        assert {first, second} <= set(report.expired_deployments)
        project = f"sites/{tenant.project_id}/"
        for gone in (first, second):
            assert keys(env["SITES_BUCKET"], f"{project}{gone}/") == set()
            assert keys(env["SITES_BUCKET"], f"{project}_deployments/{gone}.json") == set()
            assert rt.store.missing([log_key(gone)]) == {log_key(gone)}
            assert client.get(f"/sites/{tenant.project_id}@{gone}/").status_code == 404
        assert keys(env["SITES_BUCKET"], f"{project}{third}/") == {
            f"{project}{third}/{p}" for p in ("index.html", "only-3.txt")
        }
        blobs = keys(env["ARTIFACTS_BUCKET"], "blobs/")
        assert blob_key(sha256_hex(f"{run} 1".encode())) not in blobs
        assert blob_key(sha256_hex(f"{run} 3".encode())) in blobs
        assert client.get(f"/sites/{tenant.project_id}/").get_data() == b"v3"


def test_gc_on_pages_deletes_the_old_pages_deployments(runtime, worker):
    fake = FakeCloudflare().start()
    env = {
        "DEPLOY_TARGET": "cloudflare-pages",
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
        "CLOUDFLARE_API_TOKEN": TOKEN,
        "CLOUDFLARE_API_BASE_URL": fake.base_url,
    }
    try:
        with service_on(env) as (rt, client):
            tenant = make_tenant(rt)
            run = new_id("run")
            first, second, third = _versions(client, tenant, run)
            assert len(fake.deployments) == 3

            report = collect_garbage(_collector(rt))

            assert {first, second} <= set(report.expired_deployments)
            assert [d["commit_message"] for d in fake.deployments.values()] == [f"libra-deploy {third}"]
            assert fake.count("DELETE", "/deployments/") == 2
            records = f"targets/cloudflare-pages/{tenant.project_id}/"
            assert set(rt.store.list_keys(records)) == {f"{records}{third}.json", f"{records}live"}
            for gone in (first, second):
                assert client.get(f"/sites/{tenant.project_id}@{gone}/").status_code == 404
            assert rt.store.missing([blob_key(sha256_hex(f"{run} 1".encode()))]) != set()
            assert client.get(f"/sites/{tenant.project_id}/").get_data() == b"v3"
            assert (
                client.get(f"/sites/{tenant.project_id}@{third}/only-3.txt").get_data() == f"{run} 3".encode()
            )
    finally:
        fake.stop()
