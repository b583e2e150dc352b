"""Serving deployed sites: content types, caching, redirects, indexes and 404s."""

from __future__ import annotations

import pytest

from tests.helpers import deploy, make_tenant, wait_for

SITE = {
    "index.html": "<h1>home</h1>",
    "docs/index.html": "<h1>docs</h1>",
    "assets/app-BdE3f9a1.js": "console.log(1)",
    "assets/logo.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>",
    "data/info.json": '{"a": 1}',
    "robots.txt": "User-agent: *",
    "404.html": "<h1>not here</h1>",
}


@pytest.fixture(scope="module")
def site(runtime, worker, app):
    tenant = make_tenant(runtime)
    client = app.test_client()
    assert wait_for(client, tenant, deploy(client, tenant, SITE))["status"] == "completed"
    return tenant


def test_sites_need_no_credentials_and_send_the_right_types(client, site):
    base = f"/sites/{site.project_id}"
    expected = {
        "/": "text/html; charset=utf-8",
        "/assets/app-BdE3f9a1.js": "text/javascript; charset=utf-8",
        "/assets/logo.svg": "image/svg+xml; charset=utf-8",
        "/data/info.json": "application/json; charset=utf-8",
        "/robots.txt": "text/plain; charset=utf-8",
    }
    for path, content_type in expected.items():
        response = client.get(base + path)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"] == content_type, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_html_is_revalidated_and_fingerprinted_assets_are_immutable(client, site):
    base = f"/sites/{site.project_id}"
    assert client.get(base + "/").headers["Cache-Control"] == "public, max-age=0, must-revalidate"
    assert client.get(base + "/robots.txt").headers["Cache-Control"] == "public, max-age=0, must-revalidate"
    immutable = client.get(base + "/assets/app-BdE3f9a1.js").headers["Cache-Control"]
    assert immutable == "public, max-age=31536000, immutable"


def test_etag_answers_304_when_unchanged(client, site):
    url = f"/sites/{site.project_id}/robots.txt"
    first = client.get(url)
    etag = first.headers["ETag"]
    assert etag.startswith('"')
    assert len(etag) == 34
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_the_project_root_redirects_to_its_trailing_slash(client, site):
    response = client.get(f"/sites/{site.project_id}")
    assert response.status_code == 308
    assert response.headers["Location"].endswith(f"/sites/{site.project_id}/")


def test_a_directory_serves_its_index_and_redirects_without_its_slash(client, site):
    base = f"/sites/{site.project_id}"
    assert client.get(base + "/docs/").get_data(as_text=True) == "<h1>docs</h1>"
    response = client.get(base + "/docs")
    assert response.status_code == 308
    assert response.headers["Location"].endswith(f"{base}/docs/")


def test_a_missing_file_gets_the_sites_own_404_page(client, site):
    response = client.get(f"/sites/{site.project_id}/nope.html")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == "<h1>not here</h1>"
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"


def test_traversal_never_leaves_the_site(client, site):
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/docs/../../x", "/..%2fx"):
        response = client.get(f"/sites/{site.project_id}{path}")
        assert response.status_code in (404, 308), path
        assert b"root:" not in response.get_data()


def test_a_site_without_404_page_answers_json_404(client, runtime, worker):
    tenant = make_tenant(runtime)
    assert wait_for(client, tenant, deploy(client, tenant, {"index.html": "x"}))["status"] == "completed"
    response = client.get(f"/sites/{tenant.project_id}/missing.css")
    assert response.status_code == 404
    assert response.get_json()["error"] == "FILE_NOT_FOUND"


def test_a_project_that_never_deployed_is_404(client, tenant):
    response = client.get(f"/sites/{tenant.project_id}/")
    assert response.status_code == 404
    assert response.get_json()["error"] == "SITE_NOT_FOUND"
    assert client.get("/sites/not-an-id/").status_code == 404
