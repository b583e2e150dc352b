"""Immutable deployment URLs; promote and rollback as a pointer switch; pins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from libra_deploy.models import Deployment
from tests.helpers import deploy, deploy_completed, make_tenant, new_project, wait_for, wait_for_step


def _page(n: int) -> dict[str, str]:
    return {"index.html": f"<h1>version {n}</h1>", "shared.css": "h1 { color: teal }"}


def _target_files(settings, project_id: str) -> dict[str, int]:
    """Every file the local target holds for the project, with its mtime, but the live pointer."""
    root = Path(settings.data_dir, "sites", project_id)
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("live", ".lock")
    }


def _deployment_count(runtime, project_id: str) -> int:
    with runtime.sessions() as session:
        return session.scalar(select(func.count()).where(Deployment.project_id == project_id))


def _promote(client, tenant, deployment_id: str, project_id: str | None = None):
    return client.post(
        f"/projects/{project_id or tenant.project_id}/promote",
        json={"deploymentId": deployment_id},
        headers=tenant.headers,
    )


def _rollback(client, tenant, deployment_id: str | None = None):
    body = {"deploymentId": deployment_id} if deployment_id else {}
    return client.post(f"/projects/{tenant.project_id}/rollback", json=body, headers=tenant.headers)


@pytest.mark.stack
def test_two_deployments_side_by_side_and_promote_switches_with_no_upload_and_no_build(
    client, worker, runtime, settings, tenant
):
    first = deploy_completed(client, tenant, _page(1))
    second = deploy_completed(client, tenant, _page(2))
    site = f"/sites/{tenant.project_id}"
    assert client.get(f"{site}@{first}/").get_data(as_text=True) == "<h1>version 1</h1>"
    assert client.get(f"{site}@{second}/").get_data(as_text=True) == "<h1>version 2</h1>"
    assert client.get(f"{site}/").get_data(as_text=True) == "<h1>version 2</h1>"
    status = client.get(f"/deploy-status?id={first}", headers=tenant.headers).get_json()
    assert status["deploymentUrl"] == f"http://testserver{site}@{first}/"
    assert status["url"] == f"http://testserver{site}/"
    files_before = _target_files(settings, tenant.project_id)
    deployments_before = _deployment_count(runtime, tenant.project_id)

    response = _promote(client, tenant, first)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["deploymentId"] == first
    assert body["previousDeploymentId"] == second
    assert body["url"] == f"http://testserver{site}/"
    assert body["deploymentUrl"] == f"http://testserver{site}@{first}/"
    assert client.get(f"{site}/").get_data(as_text=True) == "<h1>version 1</h1>"
    # Nothing was uploaded (the target's files are the same, untouched) and nothing was built.
    assert _target_files(settings, tenant.project_id) == files_before
    assert _deployment_count(runtime, tenant.project_id) == deployments_before
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["productionDeploymentId"] == first
    assert project["deploymentStatus"] == "deployed"
    assert project["productionDeployUrl"] == f"http://testserver{site}/"
    assert client.get(f"{site}@{second}/").get_data(as_text=True) == "<h1>version 2</h1>"
    logs = client.get(f"/deploy-status?id={first}", headers=tenant.headers).get_json()["logs"]
    assert f"Promoted to production by {tenant.user_id} (live before: {second})" in logs


def test_rollback_goes_back_one_deployment_at_a_time(client, worker, runtime, settings, tenant):
    v1, v2, v3 = (deploy_completed(client, tenant, _page(n)) for n in (1, 2, 3))
    site = f"/sites/{tenant.project_id}/"
    files_before = _target_files(settings, tenant.project_id)
    deployments_before = _deployment_count(runtime, tenant.project_id)

    back = _rollback(client, tenant)
    assert back.status_code == 200, back.get_json()
    assert (back.get_json()["deploymentId"], back.get_json()["previousDeploymentId"]) == (v2, v3)
    assert client.get(site).get_data(as_text=True) == "<h1>version 2</h1>"
    assert _rollback(client, tenant).get_json()["deploymentId"] == v1
    assert client.get(site).get_data(as_text=True) == "<h1>version 1</h1>"
    # Live at once: nothing was built (no new deployment) and nothing uploaded (no file written).
    assert _deployment_count(runtime, tenant.project_id) == deployments_before
    assert _target_files(settings, tenant.project_id) == files_before

    nothing = _rollback(client, tenant)
    assert nothing.status_code == 409
    assert nothing.get_json()["error"] == "NOTHING_TO_ROLL_BACK"
    forward = _rollback(client, tenant, v3)
    assert forward.status_code == 409
    assert forward.get_json()["error"] == "NOT_AN_EARLIER_DEPLOYMENT"

    assert _promote(client, tenant, v3).status_code == 200
    assert _rollback(client, tenant, v1).get_json()["deploymentId"] == v1
    assert client.get(site).get_data(as_text=True) == "<h1>version 1</h1>"


def test_a_project_that_never_went_live_has_nothing_to_roll_back(client, tenant):
    response = _rollback(client, tenant)
    assert response.status_code == 409
    assert response.get_json()["error"] == "NOTHING_TO_ROLL_BACK"


def test_promote_refuses_what_cannot_go_live(client, worker, runtime, tenant):
    live = deploy_completed(client, tenant, _page(1))
    other_project = new_project(runtime, tenant)
    elsewhere = deploy_completed(client, tenant, _page(2), project_id=other_project)
    stranger = make_tenant(runtime)
    foreign = deploy_completed(client, stranger, _page(3))
    broken = deploy(
        client,
        tenant,
        {"package.json": json.dumps({"scripts": {"build": "node -e process.exit(3)"}})},
        replaceFiles=True,
    )
    assert wait_for(client, tenant, broken)["status"] == "failed"

    cases = [
        (_promote(client, tenant, broken), 409, "DEPLOYMENT_NOT_COMPLETED"),
        (_promote(client, tenant, elsewhere), 409, "DEPLOYMENT_NOT_OF_PROJECT"),
        (_promote(client, tenant, foreign), 404, "DEPLOYMENT_NOT_FOUND"),
        (_promote(client, tenant, "dep_nope"), 404, "DEPLOYMENT_NOT_FOUND"),
        (_promote(client, tenant, live, project_id=stranger.project_id), 404, "PROJECT_NOT_FOUND"),
        (_rollback(client, tenant, foreign), 404, "DEPLOYMENT_NOT_FOUND"),
        (client.post(f"/projects/{tenant.project_id}/promote", json={}, headers=tenant.headers), 400, None),
        (client.post(f"/projects/{tenant.project_id}/promote", json={"deploymentId": live}), 401, None),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.get_json()
        if code:
            assert response.get_json()["error"] == code
    assert client.get(f"/sites/{tenant.project_id}/").get_data(as_text=True) == "<h1>version 1</h1>"
    # A deployment that did not complete has no URL of its own.
    missing = client.get(f"/sites/{tenant.project_id}@{broken}/")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "DEPLOYMENT_NOT_FOUND"
    assert client.get(f"/sites/{other_project}@{live}/").status_code == 404


@pytest.mark.slow
def test_promote_waits_for_a_running_deployment(client, worker, tenant):
    first = deploy_completed(client, tenant, _page(1))
    slow = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "setTimeout(() => { require('fs').mkdirSync('dist'); "
        "require('fs').writeFileSync('dist/index.html', 'slow') }, 3000)",
    }
    running = deploy(client, tenant, slow, replaceFiles=True)
    wait_for_step(client, tenant, running, "build", "in_progress")

    refused = _promote(client, tenant, first)

    assert refused.status_code == 409
    assert refused.get_json()["error"] == "DEPLOYMENT_IN_PROGRESS"
    assert wait_for(client, tenant, running)["status"] == "completed"
    assert _promote(client, tenant, first).status_code == 200


def test_pins_are_set_and_cleared_within_the_organisation(client, worker, runtime, tenant):
    deployment_id = deploy_completed(client, tenant, _page(1))
    url = f"/deployments/{deployment_id}/pin"

    pinned = client.put(url, headers=tenant.headers)
    assert pinned.status_code == 200
    assert pinned.get_json()["pinned"] is True
    assert (
        client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()["pinned"] is True
    )
    assert client.put(url, headers=tenant.headers).get_json()["pinned"] is True  # idempotent
    assert client.delete(url, headers=tenant.headers).get_json()["pinned"] is False
    assert (
        client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()["pinned"] is False
    )

    stranger = make_tenant(runtime)
    assert client.put(url, headers=stranger.headers).status_code == 404
    assert client.put(url).status_code == 401
