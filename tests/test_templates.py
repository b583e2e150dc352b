"""Templates, per-project sandbox providers, and real framework builds with the dependency cache."""

from __future__ import annotations

import re

import pytest

from libra_deploy import templates
from libra_deploy.steps.build import build_log_key
from libra_deploy.steps.cleanup import log_key
from tests.helpers import deploy, make_tenant, wait_for


def _create_project(client, tenant, **body):
    return client.post("/projects", json={"name": "site", **body}, headers=tenant.headers)


def test_templates_are_listed_for_authenticated_callers(client, tenant):
    assert client.get("/templates").status_code == 401
    response = client.get("/templates", headers=tenant.headers)
    assert response.status_code == 200
    listed = {t["id"]: t for t in response.get_json()["templates"]}
    assert set(listed) == {"static", "vite-react"}
    assert listed["vite-react"]["framework"] == "vite"
    assert {"package.json", "package-lock.json", "src/main.jsx"} <= set(listed["vite-react"]["files"])
    assert "index.html" in listed["static"]["files"]


def test_an_unknown_template_or_sandbox_provider_is_refused(client, tenant):
    response = _create_project(client, tenant, template="wordpress")
    assert response.status_code == 400
    assert response.get_json()["error"] == "UNKNOWN_TEMPLATE"
    response = _create_project(client, tenant, sandboxProvider="docker")
    assert response.status_code == 400
    assert "sandboxProvider" in response.get_json()["details"]
    created = _create_project(client, tenant, template="static", sandboxProvider="e2b")
    assert created.status_code == 201
    assert (created.get_json()["template"], created.get_json()["sandboxProvider"]) == ("static", "e2b")


@pytest.mark.stack
def test_a_template_project_is_deployed_from_its_template_alone(client, tenant, worker):
    project = _create_project(client, tenant, template="static").get_json()["id"]

    status = wait_for(client, tenant, deploy(client, tenant, project_id=project))

    assert status["status"] == "completed", status
    served = templates.files("static")
    assert client.get(f"/sites/{project}/").get_data() == served["index.html"]
    assert client.get(f"/sites/{project}/style.css").get_data() == served["style.css"]
    # The template was the first tree only: a later deployment builds on the stored files.
    changed = wait_for(
        client, tenant, deploy(client, tenant, {"index.html": "<h1>mine</h1>"}, project_id=project)
    )
    assert changed["status"] == "completed"
    assert client.get(f"/sites/{project}/").get_data() == b"<h1>mine</h1>"
    assert client.get(f"/sites/{project}/style.css").get_data() == served["style.css"]


def test_a_projects_own_sandbox_provider_is_used(client, tenant, worker):
    # The default is the local sandbox; this project chose E2B, which has no API key here.
    project = _create_project(client, tenant, sandboxProvider="e2b").get_json()["id"]
    files = {"package.json": '{"scripts": {"build": "node b.js"}}', "b.js": ""}

    status = wait_for(client, tenant, deploy(client, tenant, files, project_id=project))

    assert status["status"] == "failed"
    assert status["steps"]["sandbox"]["status"] == "failed"
    assert status["errorCode"] == "CONFIG_ERROR"
    assert "E2B_API_KEY" in status["error"]
    assert status["steps"]["sandbox"]["attempts"] == 1


@pytest.mark.slow
def test_a_vite_react_template_builds_with_npm_and_the_second_build_hits_the_cache(app, runtime, worker):
    client = app.test_client()
    tenant = make_tenant(runtime)
    project = _create_project(client, tenant, template="vite-react").get_json()["id"]

    first = wait_for(client, tenant, deploy(client, tenant, project_id=project), timeout=600)

    assert first["status"] == "completed", first
    page = client.get(f"/sites/{project}/").get_data(as_text=True)
    script = re.search(r'src="\./(assets/index-[\w-]+\.js)"', page)
    assert script is not None, page
    bundle = client.get(f"/sites/{project}/{script.group(1)}")
    assert bundle.status_code == 200
    assert bundle.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert b"Built in a sandbox" in bundle.get_data()
    first_log = runtime.store.get(log_key(first["deploymentId"])).decode()
    assert "Framework: Vite (React); package manager: npm" in first_log
    assert "No dependency cache for this package-lock.json yet" in first_log
    assert "Dependencies cached" in first_log
    build_log = runtime.store.get(build_log_key(first["deploymentId"])).decode()
    assert "$ npm ci --no-audit --no-fund" in build_log
    assert "$ npm run build" in build_log

    second = wait_for(client, tenant, deploy(client, tenant, project_id=project), timeout=600)

    assert second["status"] == "completed", second
    second_log = runtime.store.get(log_key(second["deploymentId"])).decode()
    assert "Dependencies restored from the cache" in second_log
    assert "npm ci" not in runtime.store.get(build_log_key(second["deploymentId"])).decode()
    assert client.get(f"/sites/{project}/").get_data(as_text=True) == page
