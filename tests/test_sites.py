"""Serving deployed sites: content types, caching, redirects, indexes and 404s, and the sandbox
of the sites served from the API's own origin."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libra_deploy import auth, sites
from libra_deploy.db import transaction
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


# -- the API's own origin ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),
        ("/assets/app-BdE3f9a1.js", 200),
        ("/assets/logo.svg", 200),  # an SVG opened on its own is a document, with scripts
        ("/nope.html", 404),  # the site's own 404 page
        ("/docs", 308),
        ("", 308),  # the project without its trailing slash
    ],
)
def test_every_answer_under_sites_runs_in_a_sandbox_of_its_own(client, site, path, status):
    response = client.get(f"/sites/{site.project_id}{path}", headers={"Origin": "http://localhost:3000"})

    assert response.status_code == status
    # No allow-same-origin: the page gets an opaque origin, not the API's (its requests say Origin: null).
    assert response.headers.getlist("Content-Security-Policy") == [sites.SANDBOX_POLICY]
    directive, *flags = sites.SANDBOX_POLICY.split()
    assert directive == "sandbox"
    assert "allow-scripts" in flags
    assert not {"allow-same-origin", "allow-top-navigation", "allow-top-navigation-by-user-activation"} & set(
        flags
    )
    # From an opaque origin the site's own module scripts, fonts and fetches are CORS requests: any
    # page may read a site's public files, without credentials, even from an origin CORS allows.
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_the_sandbox_is_on_every_kind_of_answer(client, site, runtime):
    base = f"/sites/{site.project_id}"
    etag = client.get(base + "/robots.txt").headers["ETag"]
    deployment_id = runtime.target.live_deployment(site.project_id)
    answers = {
        "not modified": client.get(base + "/robots.txt", headers={"If-None-Match": etag}),
        "head": client.head(base + "/"),
        "one deployment": client.get(f"/sites/{site.project_id}@{deployment_id}/"),
        "unknown site": client.get("/sites/prj_does_not_exist/"),
        "no such route": client.post(base + "/"),
    }
    for what, response in answers.items():
        assert response.headers.getlist("Content-Security-Policy") == [sites.SANDBOX_POLICY], what
    assert answers["not modified"].status_code == 304
    assert answers["unknown site"].status_code == 404
    assert answers["no such route"].status_code == 405
    # The API itself is not sandboxed: its pages (the reference) run on its origin.
    assert "Content-Security-Policy" not in client.get("/health").headers


def _session_client(app, runtime, tenant):
    with transaction(runtime.sessions) as session:
        _row, value = auth.create_session(
            session, org_id=tenant.org_id, user_id=tenant.user_id, ttl=timedelta(hours=1)
        )
    visitor = app.test_client()
    visitor.set_cookie("session", value)
    return visitor


def test_what_a_sandboxed_page_sends_with_a_visitors_session_is_refused(app, runtime, tenant):
    # A browser sends the visitor's session cookie along with what a page under /sites/ asks for,
    # but the sandbox makes the page's origin opaque: Chromium says so with these two headers.
    visitor = _session_client(app, runtime, tenant)
    from_the_sandbox = {"Origin": "null", "Sec-Fetch-Site": "cross-site"}
    url = f"/projects/{tenant.project_id}"

    refused = visitor.patch(url, json={"name": "defaced"}, headers=from_the_sandbox)
    # A form the page submits (allow-forms) is a simple request: it reaches the server all the same.
    form = visitor.post("/deploy", data="a=b", content_type="text/plain", headers=from_the_sandbox)
    read = visitor.get(url, headers=from_the_sandbox)

    assert refused.status_code == 403
    assert refused.get_json()["error"] == "CROSS_SITE_REQUEST"
    assert form.status_code == 403
    assert form.get_json()["error"] == "CROSS_SITE_REQUEST"
    # A read is answered, but without CORS headers for the opaque origin the browser withholds it.
    assert read.status_code == 200
    assert "Access-Control-Allow-Origin" not in read.headers
    assert read.get_json()["name"] != "defaced"
    # The session itself works: the same write without the sandbox's Origin goes through.
    assert visitor.patch(url, json={"name": "renamed"}).get_json()["name"] == "renamed"
