"""The S3 object store and the S3 deploy target against a real S3 server on loopback (moto, over HTTP)."""

from __future__ import annotations

import hashlib
import json

import boto3
import pytest
import requests

from libra_deploy.adapters.s3_store import S3ObjectStore
from libra_deploy.adapters.s3_target import S3Target
from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError, ProviderError
from libra_deploy.models import new_id
from libra_deploy.ports import DeployTarget, Manifest, ObjectNotFound, ObjectStore, PresignedDownloads
from tests.s3_server import S3Server, refused_url


@pytest.fixture(scope="module")
def s3():
    server = S3Server.start()
    yield server
    server.stop()


def _settings(tmp_path, env: dict[str, str]) -> Settings:
    return Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path), "OBJECT_STORE": "s3", **env})


def _raw_client(s3: S3Server):
    return boto3.client(
        "s3",
        endpoint_url=s3.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )


@pytest.fixture
def store(s3, tmp_path) -> S3ObjectStore:
    return S3ObjectStore.from_settings(_settings(tmp_path, s3.env()))


def _site(store: ObjectStore, files: dict[str, bytes]) -> Manifest:
    manifest: Manifest = {}
    for path, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        store.put(f"blobs/{sha}", data)
        manifest[path] = {"sha256": sha, "size": len(data)}
    return manifest


# The object store -------------------------------------------------------------------------------


def test_the_store_keeps_logs_and_artifacts_in_their_own_buckets(s3, store):
    assert isinstance(store, ObjectStore)
    store.put("blobs/abc", b"blob")
    store.put("logs/dep_x.log", b"log line\n", content_type="text/plain; charset=utf-8")

    raw = _raw_client(s3)
    assert raw.get_object(Bucket=store.artifacts_bucket, Key="blobs/abc")["Body"].read() == b"blob"
    log = raw.get_object(Bucket=store.logs_bucket, Key="logs/dep_x.log")
    assert log["Body"].read() == b"log line\n"
    assert log["ContentType"] == "text/plain; charset=utf-8"
    assert store.get("blobs/abc") == b"blob"
    assert store.missing(["blobs/abc", "logs/dep_x.log", "blobs/nope", "logs/nope"]) == {
        "blobs/nope",
        "logs/nope",
    }


def test_get_of_a_missing_key_is_object_not_found_and_delete_is_idempotent(store):
    store.put("cache/k", b"v")
    store.delete("cache/k")
    store.delete("cache/k")
    with pytest.raises(ObjectNotFound):
        store.get("cache/k")


def test_list_keys_walks_both_buckets_by_prefix(store):
    for key in ("blobs/a", "blobs/b", "cache/x", "logs/d1.log", "logs/d2/build.log"):
        store.put(key, b"1")
    assert sorted(store.list_keys("blobs/")) == ["blobs/a", "blobs/b"]
    assert sorted(store.list_keys("logs/")) == ["logs/d1.log", "logs/d2/build.log"]
    assert sorted(store.list_keys("")) == [
        "blobs/a",
        "blobs/b",
        "cache/x",
        "logs/d1.log",
        "logs/d2/build.log",
    ]
    assert list(store.list_keys("nothing/")) == []


def test_presigned_urls_download_logs_and_artifacts(store):
    assert isinstance(store, PresignedDownloads)
    store.put("logs/dep_y.log", b"the full log")
    store.put("artifacts/dep_y/output.tar.gz", b"tarball")
    for key, body in (("logs/dep_y.log", b"the full log"), ("artifacts/dep_y/output.tar.gz", b"tarball")):
        url = store.presigned_url(key, expires_s=60)
        assert "X-Amz-Signature=" in url
        assert requests.get(url, timeout=10).content == body


def test_uploads_carry_no_checksum_trailers_r2_would_refuse(s3, store):
    s3.start_recording()
    store.put("blobs/checksum", b"data")
    (put,) = [r for r in s3.recorded() if r["method"] == "PUT"]
    headers = {k.lower() for k in put["headers"]}
    assert not {h for h in headers if h.startswith("x-amz-checksum") or h == "x-amz-sdk-checksum-algorithm"}


def test_a_missing_bucket_is_a_configuration_error_naming_it_unless_created(s3, tmp_path):
    env = s3.env(S3_CREATE_BUCKETS="0")
    with pytest.raises(ConfigError) as raised:
        S3ObjectStore.from_settings(_settings(tmp_path, env))
    assert raised.value.setting == "ARTIFACTS_BUCKET"
    assert env["ARTIFACTS_BUCKET"] in str(raised.value)

    created = S3ObjectStore.from_settings(_settings(tmp_path, {**env, "S3_CREATE_BUCKETS": "1"}))
    names = {b["Name"] for b in _raw_client(s3).list_buckets()["Buckets"]}
    assert {env["ARTIFACTS_BUCKET"], env["LOGS_BUCKET"]} <= names
    created.put("logs/ok", b"1")


def test_an_endpoint_that_refuses_connections_is_a_retryable_error(s3, tmp_path):
    settings = _settings(tmp_path, s3.env(S3_ENDPOINT_URL=refused_url()))
    store = S3ObjectStore.from_settings(settings)  # start-up survives a store that is away
    with pytest.raises(ProviderError) as raised:
        store.put("blobs/x", b"1")
    assert raised.value.retryable is True
    assert raised.value.code == "PROVIDER_UNAVAILABLE"
    assert "test-secret-access-key" not in str(raised.value)


def test_missing_keys_are_a_configuration_error_naming_the_other_one(s3, tmp_path):
    env = s3.env()
    env.pop("S3_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError) as raised:
        _settings(tmp_path, env)
    assert raised.value.setting == "S3_SECRET_ACCESS_KEY"
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"DEPLOY_TARGET": "s3"})
    assert raised.value.setting == "SITES_BUCKET"


# The deploy target ------------------------------------------------------------------------------


@pytest.fixture
def target(s3, tmp_path) -> S3Target:
    env = s3.env(DEPLOY_TARGET="s3", SITES_PUBLIC_URL="https://sites.example.io")
    return S3Target.from_settings(_settings(tmp_path, env))


SITE = {
    "index.html": b"<h1>v1</h1>",
    "assets/app-3f9a1c2b.js": b"console.log(1)",
    "assets/copy-of-app.js": b"console.log(1)",
    "about/index.html": b"<h1>about</h1>",
}


def _read(target: DeployTarget, project: str, deployment: str, path: str) -> bytes | None:
    found = target.open(project, deployment, path)
    if found is None:
        return None
    with found.open() as f:
        return f.read()


def _copies(s3: S3Server, bucket: str, prefix: str = "") -> dict[str, str]:
    """The CopyObjects the server received into ``bucket`` under ``prefix`` (``S3Server.uploads``
    leaves them out): the path copied to -> the key copied from."""
    found = {}
    for request in s3.recorded():
        headers = {k.lower(): v for k, v in request["headers"].items()}
        path = request["url"].split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
        if path.startswith(f"{bucket}/{prefix}") and "x-amz-copy-source" in headers:
            found[path] = headers["x-amz-copy-source"].removeprefix(f"{bucket}/")
    return found


def _keys(s3: S3Server, bucket: str, prefix: str) -> set[str]:
    pages = _raw_client(s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_deploy_redeploy_unchanged_uploads_nothing_and_switch(s3, store, target):
    assert isinstance(target, DeployTarget)
    project, first, second, third = new_id("prj"), new_id("dep"), new_id("dep"), new_id("dep")
    manifest = _site(store, SITE)

    s3.start_recording()
    published = target.publish(project, first, manifest, store)
    assert (published.uploaded_files, published.uploaded_bytes) == (
        3,
        len(b"<h1>v1</h1>" + b"console.log(1)" + b"<h1>about</h1>"),
    )
    # Counted by the server: one PUT per distinct content, plus the manifest.
    assert len(s3.uploads(target.bucket, f"sites/{project}/{first}/")) == 3
    assert published.url == f"https://sites.example.io/sites/{project}/{first}/index.html"
    assert target.live_deployment(project) is None
    target.activate(project, first)
    assert target.live_deployment(project) == first
    assert _read(target, project, first, "about/index.html") == b"<h1>about</h1>"
    assert target.open(project, first, "missing.html") is None

    s3.start_recording()
    again = target.publish(project, second, manifest, store)
    assert (again.uploaded_files, again.uploaded_bytes) == (0, 0)
    # Counted by the server: no site file written or copied anywhere, only the manifest and the
    # record of the share.
    assert sorted(s3.uploads(target.bucket, f"sites/{project}/")) == [
        f"{target.bucket}/sites/{project}/_deployments/{first}.sharers/{second}",
        f"{target.bucket}/sites/{project}/_deployments/{second}.json",
    ]
    assert _copies(s3, target.bucket) == {}
    # It serves the first deployment's files, whose prefix is its URL too.
    assert again.url == f"https://sites.example.io/sites/{project}/{first}/index.html"
    target.activate(project, second)
    assert target.live_deployment(project) == second
    for path, data in SITE.items():
        assert _read(target, project, second, path) == data

    changed = {**manifest, **_site(store, {"index.html": b"<h1>v3</h1>"})}
    s3.start_recording()
    third_result = target.publish(project, third, changed, store)
    assert third_result.uploaded_files == 1
    assert s3.uploads(target.bucket, f"sites/{project}/{third}/") == [
        f"{target.bucket}/sites/{project}/{third}/index.html"
    ]
    target.activate(project, third)
    assert _read(target, project, target.live_deployment(project), "index.html") == b"<h1>v3</h1>"
    # Switching back (a rollback) is one write of the pointer; the old files are still there.
    target.activate(project, first)
    assert target.live_deployment(project) == first
    assert _read(target, project, first, "index.html") == b"<h1>v1</h1>"


def test_objects_carry_their_type_and_caching_and_the_public_url_serves_them(s3, store, target):
    project, deployment = new_id("prj"), new_id("dep")
    target.publish(project, deployment, _site(store, SITE), store)
    raw = _raw_client(s3)
    page = raw.head_object(Bucket=target.bucket, Key=f"sites/{project}/{deployment}/index.html")
    assert page["ContentType"] == "text/html; charset=utf-8"
    assert page["CacheControl"] == "public, max-age=0, must-revalidate"
    asset = raw.head_object(Bucket=target.bucket, Key=f"sites/{project}/{deployment}/assets/app-3f9a1c2b.js")
    assert asset["CacheControl"] == "public, max-age=31536000, immutable"
    # A bucket served as it is (public read, as an R2 public bucket): the deployment's own prefix
    # is its immutable URL.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{target.bucket}/*",
            }
        ],
    }
    raw.put_bucket_policy(Bucket=target.bucket, Policy=json.dumps(policy))
    served = requests.get(f"{s3.url}/{target.bucket}/sites/{project}/{deployment}/index.html", timeout=10)
    assert served.content == b"<h1>v1</h1>"


def test_publishing_the_same_deployment_twice_is_harmless(s3, store, target):
    project, deployment = new_id("prj"), new_id("dep")
    manifest = _site(store, SITE)
    target.publish(project, deployment, manifest, store)
    # Again before its activation, and after it: then the live deployment is itself, whose files it
    # owns (no share with itself).
    for activated in (False, True):
        if activated:
            target.activate(project, deployment)
        s3.start_recording()
        assert target.publish(project, deployment, manifest, store).uploaded_files == 0
        assert s3.uploads(target.bucket, f"sites/{project}/") == [
            f"{target.bucket}/sites/{project}/_deployments/{deployment}.json"
        ]
        assert _copies(s3, target.bucket) == {}


def test_activating_an_unpublished_deployment_is_refused(target):
    with pytest.raises(ProviderError, match="never published"):
        target.activate(new_id("prj"), new_id("dep"))


def test_remove_deletes_one_deployment_and_keeps_the_others(s3, store, target):
    project, old, live = new_id("prj"), new_id("dep"), new_id("dep")
    manifest = _site(store, SITE)
    target.publish(project, old, manifest, store)
    target.activate(project, old)
    # Changed content: the live deployment has its own prefix, its unchanged files copied into it.
    target.publish(project, live, {**manifest, **_site(store, {"index.html": b"<h1>v2</h1>"})}, store)
    target.activate(project, live)

    target.remove(project, old)
    target.remove(project, old)  # idempotent

    assert not any(old in key for key in _keys(s3, target.bucket, f"sites/{project}/"))
    assert target.open(project, old, "index.html") is None
    assert _read(target, project, live, "assets/app-3f9a1c2b.js") == b"console.log(1)"
    assert _read(target, project, live, "assets/copy-of-app.js") == b"console.log(1)"


def _shared_deployments(store: ObjectStore, target: S3Target) -> tuple[str, str, str, Manifest]:
    """A project whose first deployment owns the files and whose second, unchanged, is live."""
    project, owner, sharer = new_id("prj"), new_id("dep"), new_id("dep")
    manifest = _site(store, SITE)
    target.publish(project, owner, manifest, store)
    target.activate(project, owner)
    target.publish(project, sharer, manifest, store)
    target.activate(project, sharer)
    return project, owner, sharer, manifest


def test_removing_a_shared_owner_keeps_its_files_until_its_last_sharer_goes(s3, store, target):
    project, owner, sharer, manifest = _shared_deployments(store, target)

    target.remove(project, owner)
    target.remove(project, owner)  # harmless twice
    assert target.open(project, owner, "index.html") is None
    for path, data in SITE.items():
        assert _read(target, project, sharer, path) == data

    changed = new_id("dep")
    target.publish(project, changed, {**manifest, **_site(store, {"index.html": b"<h1>v3</h1>"})}, store)
    target.activate(project, changed)
    target.remove(project, sharer)
    target.remove(project, sharer)
    assert target.open(project, sharer, "index.html") is None
    # Neither the owner nor its sharer left anything: only the live deployment and the pointer.
    assert _keys(s3, target.bucket, f"sites/{project}/") == {
        *(f"sites/{project}/{changed}/{path}" for path in SITE),
        f"sites/{project}/_deployments/{changed}.json",
        f"sites/{project}/live",
    }
    assert _read(target, project, changed, "assets/copy-of-app.js") == b"console.log(1)"


def test_removing_a_sharer_keeps_the_files_of_an_owner_still_there(s3, store, target):
    project, owner, sharer, _ = _shared_deployments(store, target)
    target.activate(project, owner)  # a rollback: the owner is live again
    target.remove(project, sharer)
    assert target.open(project, sharer, "index.html") is None
    for path, data in SITE.items():
        assert _read(target, project, owner, path) == data
    assert not any(sharer in key for key in _keys(s3, target.bucket, f"sites/{project}/"))


def test_an_unchanged_deploy_shares_the_owner_of_the_live_deployment_never_a_sharer(s3, store, target):
    project, owner, sharer, manifest = _shared_deployments(store, target)
    third = new_id("dep")
    result = target.publish(project, third, manifest, store)
    assert result.url == f"https://sites.example.io/sites/{project}/{owner}/index.html"
    assert _keys(s3, target.bucket, f"sites/{project}/_deployments/{owner}.sharers/") == {
        f"sites/{project}/_deployments/{owner}.sharers/{sharer}",
        f"sites/{project}/_deployments/{owner}.sharers/{third}",
    }
    assert _keys(s3, target.bucket, f"sites/{project}/_deployments/{sharer}.sharers/") == set()
    for path, data in SITE.items():
        assert _read(target, project, third, path) == data


def test_a_retried_publish_of_a_sharer_writes_no_file(s3, store, target):
    project, owner, sharer = new_id("prj"), new_id("dep"), new_id("dep")
    manifest = _site(store, SITE)
    target.publish(project, owner, manifest, store)
    target.activate(project, owner)
    bookkeeping = [
        f"{target.bucket}/sites/{project}/_deployments/{owner}.sharers/{sharer}",
        f"{target.bucket}/sites/{project}/_deployments/{sharer}.json",
    ]
    # Published three times: twice before its activation (the owner is live), once after (it is).
    for activated in (False, False, True):
        if activated:
            target.activate(project, sharer)
        s3.start_recording()
        published = target.publish(project, sharer, manifest, store)
        assert (published.uploaded_files, published.uploaded_bytes) == (0, 0)
        assert published.url == f"https://sites.example.io/sites/{project}/{owner}/index.html"
        assert sorted(s3.uploads(target.bucket, f"sites/{project}/")) == bookkeeping
        assert _copies(s3, target.bucket) == {}
    assert _keys(s3, target.bucket, f"sites/{project}/{sharer}/") == set()
    for path, data in SITE.items():
        assert _read(target, project, sharer, path) == data


def test_a_changed_deploy_after_a_share_copies_from_the_owners_prefix(s3, store, target):
    project, owner, _, manifest = _shared_deployments(store, target)
    target.remove(project, owner)  # only its manifest goes: the live sharer still serves its files
    changed, new = new_id("dep"), {**manifest, **_site(store, {"index.html": b"<h1>v3</h1>"})}

    s3.start_recording()
    result = target.publish(project, changed, new, store)
    assert result.uploaded_files == 1
    assert result.url == f"https://sites.example.io/sites/{project}/{changed}/index.html"
    assert s3.uploads(target.bucket, f"sites/{project}/{changed}/") == [
        f"{target.bucket}/sites/{project}/{changed}/index.html"
    ]
    copies = _copies(s3, target.bucket)
    assert sorted(copies) == sorted(
        f"{target.bucket}/sites/{project}/{changed}/{p}" for p in SITE if p != "index.html"
    )
    assert all(source.startswith(f"sites/{project}/{owner}/") for source in copies.values())
    target.activate(project, changed)
    for path, data in {**SITE, "index.html": b"<h1>v3</h1>"}.items():
        assert _read(target, project, changed, path) == data


def test_the_target_against_a_refusing_endpoint_is_retryable(s3, store, tmp_path):
    env = s3.env(DEPLOY_TARGET="s3", S3_ENDPOINT_URL=refused_url())
    target = S3Target.from_settings(_settings(tmp_path, env))
    with pytest.raises(ProviderError) as raised:
        target.publish(new_id("prj"), new_id("dep"), _site(store, {"index.html": b"x"}), store)
    assert raised.value.retryable is True
