"""The Cloudflare Pages target against a fake Cloudflare API on loopback that checks every request."""

from __future__ import annotations

import hashlib

import pytest

from libra_deploy.adapters.cloudflare_pages import (
    CloudflareApi,
    CloudflarePagesTarget,
    node_extname,
    pages_hash,
    pages_project_name,
)
from libra_deploy.adapters.local_store import LocalObjectStore
from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError, ProviderError
from libra_deploy.models import new_id
from libra_deploy.ports import CustomDomains, DeployTarget, Manifest, ObjectStore
from tests import fake_cloudflare
from tests.fake_cloudflare import ACCOUNT, TOKEN, ZONE, FakeCloudflare
from tests.s3_server import refused_url


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # wrangler's own test vectors (deploy.test.ts), contents b"foobar".
        ("logo.png", "2082190357cfd3617ccfe04f340c6247"),
        ("logo.txt", "1a98fb08af91aca4a7df1764a2c4ddb0"),
        ("logo.html", "d96fef225537c9f5e44a3cb27fd0b492"),
        ("logo.js", "6be321bef99e758250dac034474ddbb8"),
    ],
)
def test_the_hash_matches_wranglers_test_vectors(name, expected):
    assert pages_hash(b"foobar", name) == expected
    assert fake_cloudflare.expected_hash(b"foobar", name) == expected


@pytest.mark.parametrize(
    ("name", "ext"),
    [
        ("a/b/logo.png", ".png"),
        ("archive.tar.GZ", ".GZ"),
        ("Makefile", ""),
        (".htaccess", ""),
        ("..", ""),
        ("...a", ".a"),
        ("a.", "."),
        ("dir.v2/file", ""),
    ],
)
def test_extensions_follow_nodes_path_extname(name, ext):
    assert node_extname(name) == ext


def test_project_names_are_valid_pages_names():
    name = pages_project_name("libra-", "prj_01jdq3v5y8m6c0d2rj6x1b7k9t")
    assert name == "libra-prj-01jdq3v5y8m6c0d2rj6x1b7k9t"
    assert len(name) <= 58


@pytest.fixture
def fake():
    server = FakeCloudflare().start()
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def _target(fake: FakeCloudflare, store: ObjectStore, token: str = TOKEN, **kwargs) -> CloudflarePagesTarget:
    api = CloudflareApi(fake.base_url, ACCOUNT, token, backoff_s=0.01)
    return CloudflarePagesTarget(api, store, zone_id=ZONE, poll_interval_s=0.01, **kwargs)


def _site(store: ObjectStore, files: dict[str, bytes]) -> Manifest:
    manifest: Manifest = {}
    for path, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        store.put(f"blobs/{sha}", data)
        manifest[path] = {"sha256": sha, "size": len(data)}
    return manifest


SITE = {
    "index.html": b"<h1>pages</h1>",
    "assets/app-3f9a1c2b.js": b"console.log('app')",
    "assets/same.js": b"console.log('app')",
    "img/logo.svg": b"<svg/>",
    "node_modules/left-pad/index.js": b"module.exports = 1",
    ".git/HEAD": b"ref: refs/heads/main",
    "_headers": b"/*\n  X-Frame-Options: DENY\n",
    "_redirects": b"/old /new 301\n",
}


def _read(target: DeployTarget, project: str, deployment: str, path: str) -> bytes | None:
    found = target.open(project, deployment, path)
    if found is None:
        return None
    with found.open() as f:
        return f.read()


def test_publish_uploads_the_site_as_wrangler_does_and_serves_through_the_pointer(fake, store):
    target = _target(fake, store)
    assert isinstance(target, DeployTarget)
    project, deployment = new_id("prj"), new_id("dep")

    published = target.publish(project, deployment, _site(store, SITE), store)

    assert fake.problems == []
    name = pages_project_name("libra-", project)
    assert fake.projects[name]["production_branch"] == "main"
    # Three distinct contents uploaded once each; node_modules, .git and the special files are not assets.
    assert sorted(fake.uploaded) == sorted(
        {pages_hash(SITE[p], p) for p in ("index.html", "assets/app-3f9a1c2b.js", "img/logo.svg")}
        | {pages_hash(SITE["assets/same.js"], "assets/same.js")}
    )
    (created,) = fake.deployments.values()
    assert set(created["manifest"]) == {
        "/index.html",
        "/assets/app-3f9a1c2b.js",
        "/assets/same.js",
        "/img/logo.svg",
    }
    assert created["parts"] == {"_headers": SITE["_headers"], "_redirects": SITE["_redirects"]}
    assert created["commit_message"] == f"libra-deploy {deployment}"
    assert published.url == created["url"]
    assert published.uploaded_files == len(fake.uploaded)

    assert target.live_deployment(project) is None
    target.activate(project, deployment)
    assert target.live_deployment(project) == deployment
    assert _read(target, project, deployment, "img/logo.svg") == b"<svg/>"
    assert target.open(project, deployment, "missing.html") is None


def test_redeploying_an_unchanged_site_uploads_nothing_and_switching_rolls_back(fake, store):
    target = _target(fake, store)
    project, first, second = new_id("prj"), new_id("dep"), new_id("dep")
    manifest = _site(store, SITE)
    target.publish(project, first, manifest, store)
    target.activate(project, first)
    uploads = len(fake.uploaded)

    again = target.publish(project, second, manifest, store)
    assert (again.uploaded_files, again.uploaded_bytes) == (0, 0)
    assert len(fake.uploaded) == uploads
    assert fake.count("POST", "/pages/assets/upload") == 1
    target.activate(project, second)
    assert fake.count("POST", "/rollback") == 0  # the newest deployment is production already

    target.activate(project, first)
    name = pages_project_name("libra-", project)
    first_pages_id = next(d["id"] for d in fake.deployments.values() if d["commit_message"].endswith(first))
    assert fake.projects[name]["canonical_deployment"]["id"] == first_pages_id
    assert target.live_deployment(project) == first
    # Publishing the same deployment again changes nothing.
    deployments = len(fake.deployments)
    assert target.publish(project, first, manifest, store).uploaded_files == 0
    assert len(fake.deployments) == deployments
    assert fake.problems == []


def test_rate_limits_and_server_errors_are_retried(fake, store):
    target = _target(fake, store)
    fake.fail_next("/pages/assets/check-missing", 429, times=2)
    fake.fail_next("/deployments", 503, times=1)
    target.publish(new_id("prj"), new_id("dep"), _site(store, {"index.html": b"retry"}), store)
    assert fake.count("POST", "/pages/assets/check-missing") == 3
    assert len(fake.deployments) == 1


def test_a_refused_upload_token_is_fetched_again(fake, store):
    fake.revoked_tokens = 1
    target = _target(fake, store)
    target.publish(new_id("prj"), new_id("dep"), _site(store, {"index.html": b"jwt"}), store)
    assert fake.count("GET", "/upload-token") == 2
    assert fake.problems == []


def test_a_wrong_token_is_a_permanent_error_that_does_not_show_the_token(fake, store):
    target = _target(fake, store, token="wrong-token-abcdefghij")
    with pytest.raises(ProviderError) as raised:
        target.publish(new_id("prj"), new_id("dep"), _site(store, {"index.html": b"x"}), store)
    assert raised.value.retryable is False
    assert raised.value.code == "PROVIDER_UNAUTHORIZED"
    assert "wrong-token" not in str(raised.value)


def test_exhausted_retries_on_5xx_are_retryable_for_the_step(fake, store):
    target = _target(fake, store)
    fake.fail_next("/pages/projects", 502, times=10)
    with pytest.raises(ProviderError) as raised:
        target.publish(new_id("prj"), new_id("dep"), _site(store, {"index.html": b"x"}), store)
    assert raised.value.retryable is True


def test_an_api_that_refuses_connections_is_retryable(store):
    api = CloudflareApi(refused_url() + "/client/v4", ACCOUNT, TOKEN, attempts=2, backoff_s=0.01)
    target = CloudflarePagesTarget(api, store)
    with pytest.raises(ProviderError) as raised:
        target.publish(new_id("prj"), new_id("dep"), _site(store, {"index.html": b"x"}), store)
    assert raised.value.retryable is True
    assert raised.value.code == "PROVIDER_UNAVAILABLE"


def test_a_custom_domain_is_attached_and_its_cname_created_in_our_zone(fake, store):
    target = _target(fake, store)
    assert isinstance(target, CustomDomains)
    project = new_id("prj")
    name = pages_project_name("libra-", project)

    status = target.attach_domain(project, "www.example.io")

    assert status.status == "pending"
    assert fake.domains[(name, "www.example.io")]["name"] == "www.example.io"
    (record,) = fake.dns_records
    assert (record["type"], record["name"], record["content"], record["proxied"]) == (
        "CNAME",
        "www.example.io",
        f"{name}.pages.dev",
        True,
    )
    # Attaching again is idempotent; a domain outside our zone gets instructions instead of a record.
    target.attach_domain(project, "www.example.io")
    assert len(fake.dns_records) == 1
    other = target.attach_domain(project, "shop.elsewhere.dev")
    assert other.status == "pending"
    assert f"CNAME shop.elsewhere.dev at {name}.pages.dev" in other.detail
    fake.domains[(name, "www.example.io")]["status"] = "active"
    assert target.attach_domain(project, "www.example.io").status == "active"


def test_remove_deletes_the_pages_deployment_and_keeps_the_others(fake, store):
    target = _target(fake, store)
    project, old, live = new_id("prj"), new_id("dep"), new_id("dep")
    manifest = _site(store, SITE)
    target.publish(project, old, manifest, store)
    target.publish(project, live, manifest, store)
    target.activate(project, live)

    target.remove(project, old)
    target.remove(project, old)

    assert [d["commit_message"] for d in fake.deployments.values()] == [f"libra-deploy {live}"]
    assert target.open(project, old, "index.html") is None
    assert _read(target, project, live, "index.html") == SITE["index.html"]


def test_settings_require_the_account_and_the_token(tmp_path):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"LIBRA_DATA_DIR": str(tmp_path), "DEPLOY_TARGET": "cloudflare-pages"})
    assert raised.value.setting == "CLOUDFLARE_ACCOUNT_ID"
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {
                "LIBRA_DATA_DIR": str(tmp_path),
                "DEPLOY_TARGET": "cloudflare-pages",
                "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
            }
        )
    assert raised.value.setting == "CLOUDFLARE_API_TOKEN"
