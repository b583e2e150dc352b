"""Single-page apps, nearest 404 pages, the project's fallback setting, and sites served by Host."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import deploy_completed, make_tenant

APP = {
    "index.html": "<div id=app></div>",
    "app.js": "render()",
    "blog/404.html": "no such post",
}


@pytest.fixture(scope="module")
def spa(runtime, worker, app):
    tenant = make_tenant(runtime)
    deploy_completed(app.test_client(), tenant, APP)
    return tenant


@pytest.mark.parametrize("path", ["/settings", "/settings/profile", "/users/42/edit?tab=1", "/docs/"])
def test_a_deep_link_of_a_single_page_app_gets_index_html(client, spa, path):
    response = client.get(f"/sites/{spa.project_id}{path}")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == APP["index.html"]
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=0, must-revalidate"


@pytest.mark.parametrize("path", ["/missing.js", "/assets/chunk-1a2b3c4d.css", "/favicon.ico", "/.env"])
def test_a_missing_file_with_an_extension_stays_404(client, spa, path):
    response = client.get(f"/sites/{spa.project_id}{path}")
    assert response.status_code == 404
    assert response.get_json()["error"] == "FILE_NOT_FOUND"


def test_an_existing_file_is_served_as_itself(client, spa):
    response = client.get(f"/sites/{spa.project_id}/app.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"


def test_the_nearest_404_page_answers_below_its_directory(client, spa):
    response = client.get(f"/sites/{spa.project_id}/blog/missing-post")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == "no such post"


def test_a_site_with_a_404_page_answers_it_with_404(client, runtime, worker):
    tenant = make_tenant(runtime)
    deploy_completed(client, tenant, {"index.html": "home", "404.html": "gone"})
    response = client.get(f"/sites/{tenant.project_id}/settings/profile")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == "gone"


def test_the_fallback_is_a_project_setting(client, worker, tenant):
    created = client.post("/projects", json={"name": "plain", "spaFallback": False}, headers=tenant.headers)
    assert created.status_code == 201
    project = created.get_json()
    assert project["spaFallback"] is False
    deploy_completed(client, tenant, {"index.html": "home"}, project_id=project["id"])
    deep_link = f"/sites/{project['id']}/settings"
    assert client.get(deep_link).status_code == 404

    patched = client.patch(f"/projects/{project['id']}", json={"spaFallback": True}, headers=tenant.headers)

    assert patched.status_code == 200
    assert patched.get_json()["spaFallback"] is True
    assert patched.get_json()["name"] == "plain"
    assert client.get(deep_link).get_data(as_text=True) == "home"
    renamed = client.patch(f"/projects/{project['id']}", json={"name": "renamed"}, headers=tenant.headers)
    assert renamed.get_json()["name"] == "renamed"
    assert renamed.get_json()["spaFallback"] is True
    assert (
        client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()["spaFallback"] is True
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [({"spaFallback": "sometimes"}, 400), ({"framework": "vite"}, 400), ({"name": ""}, 400)],
)
def test_patch_refuses_what_it_cannot_set(client, tenant, body, status):
    response = client.patch(f"/projects/{tenant.project_id}", json=body, headers=tenant.headers)
    assert response.status_code == status
    assert response.get_json()["error"] == "VALIDATION_ERROR"


def test_patch_of_another_organisations_project_is_404(client, runtime, tenant):
    other = make_tenant(runtime)
    response = client.patch(
        f"/projects/{other.project_id}", json={"spaFallback": False}, headers=tenant.headers
    )
    assert response.status_code == 404


# -- serving by Host header ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def domain_site(runtime, worker, app):
    tenant = make_tenant(runtime)
    client = app.test_client()
    domain = f"www-{uuid.uuid4().hex[:8]}.shop-example.io"
    created = client.post("/projects", json={"name": "shop", "customDomain": domain}, headers=tenant.headers)
    assert created.status_code == 201, created.get_json()
    project_id = created.get_json()["id"]
    files = {
        "index.html": "shop home",
        "about/index.html": "about the shop",
        "_redirects": "/old /about/ 301\n",
        "_headers": "/*\n  X-Shop: yes\n",
    }
    deploy_completed(client, tenant, files, project_id=project_id)
    return domain, project_id


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/", 200, "shop home"),
        ("/about/", 200, "about the shop"),
        ("/deep/link", 200, "shop home"),
        # On a custom domain every path is the site's, even those the API has.
        ("/deploy-status", 200, "shop home"),
        ("/health", 200, "shop home"),
        ("/missing.png", 404, None),
    ],
)
def test_a_custom_domain_serves_the_live_site_at_its_root_without_credentials(
    client, domain_site, path, status, body
):
    domain, _project_id = domain_site
    response = client.get(path, headers={"Host": domain})
    assert response.status_code == status
    assert response.headers["X-Shop"] == "yes"
    if body is not None:
        assert response.get_data(as_text=True) == body


def test_a_custom_domain_applies_the_same_rules(client, domain_site):
    domain, _project_id = domain_site
    for host in (domain, domain.upper(), f"{domain}:443", f"{domain}."):
        response = client.get("/old?from=ad", headers={"Host": host})
        assert response.status_code == 301, host
        assert response.headers["Location"] == "/about/?from=ad"
    assert client.get("/about", headers={"Host": domain}).headers["Location"] == "/about/"


def test_a_custom_domain_answers_only_reads(client, domain_site):
    domain, _project_id = domain_site
    response = client.post("/deploy", json={}, headers={"Host": domain})
    assert response.status_code == 405
    assert response.get_json()["error"] == "METHOD_NOT_ALLOWED"


def test_other_hosts_reach_the_api(client, domain_site):
    assert (
        client.get("/", headers={"Host": "unknown.shop-example.io"}).get_json()["service"] == "Libra Deploy"
    )
    assert client.get("/health", headers={"Host": "127.0.0.1:3008"}).status_code in (200, 503)
    assert client.get("/").get_json()["service"] == "Libra Deploy"
