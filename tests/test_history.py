"""History, deployment details, log pages and live logs (in process), redeploy, idempotency keys."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from libra_deploy.db import transaction, utcnow
from libra_deploy.models import Deployment, DeploymentLog
from tests.helpers import (
    deploy,
    deploy_completed,
    failing_build,
    make_tenant,
    new_project,
    parse_sse,
    queued_deployment,
    slow_printing_build,
    text_files,
    wait_for,
    wait_for_step,
)

SITE = {"index.html": "<h1>v1</h1>", "style.css": "h1 { color: teal }"}


def _page(client, tenant, project_id, **query):
    response = client.get(f"/projects/{project_id}/deployments", query_string=query, headers=tenant.headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.mark.stack
def test_history_is_newest_first_paged_stably_and_filtered(client, runtime, tenant, worker):
    project = new_project(runtime, tenant)
    first = deploy_completed(client, tenant, SITE, project_id=project)
    failed = deploy(client, tenant, failing_build(), project_id=project, replaceFiles=True)
    assert wait_for(client, tenant, failed)["status"] == "failed"
    third = deploy_completed(client, tenant, SITE, project_id=project, replaceFiles=True)

    page = _page(client, tenant, project, limit=2)
    assert [d["deploymentId"] for d in page["deployments"]] == [third, failed]
    assert page["deployments"][0]["isProduction"] is True
    assert page["deployments"][1]["errorCode"] == "BUILD_FAILED"
    assert page["nextCursor"]

    # A deployment created while paging does not shift the next page.
    fourth = deploy_completed(client, tenant, SITE, project_id=project)
    rest = _page(client, tenant, project, limit=2, cursor=page["nextCursor"])
    assert [d["deploymentId"] for d in rest["deployments"]] == [first]
    assert rest["nextCursor"] is None
    assert [d["deploymentId"] for d in _page(client, tenant, project)["deployments"]] == [
        fourth,
        third,
        failed,
        first,
    ]

    only_failed = _page(client, tenant, project, status="failed")
    assert [d["deploymentId"] for d in only_failed["deployments"]] == [failed]

    bad = client.get(f"/projects/{project}/deployments?cursor=nonsense", headers=tenant.headers)
    assert bad.status_code == 400
    assert bad.get_json()["error"] == "INVALID_CURSOR"
    other = make_tenant(runtime)
    assert client.get(f"/projects/{project}/deployments", headers=other.headers).status_code == 404


def test_deployment_details_show_source_durations_and_author(client, runtime, tenant, worker):
    deployment_id = deploy_completed(client, tenant, SITE)
    response = client.get(f"/deployments/{deployment_id}", headers=tenant.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "completed"
    assert body["source"] == {"fileCount": 2, "bytes": sum(len(c) for c in SITE.values())}
    assert body["output"]["fileCount"] == 2
    assert set(body["durations"]["steps"]) == {"validate", "sync", "sandbox", "build", "deploy", "cleanup"}
    assert all(isinstance(v, float) and v >= 0 for v in body["durations"]["steps"].values())
    assert body["durations"]["total"] >= max(body["durations"]["steps"].values())
    assert body["createdBy"]["userId"] == tenant.user_id
    assert body["createdBy"]["email"].endswith("@example.io")
    assert body["isProduction"] is True
    assert body["steps"]["build"]["status"] == "completed"  # the /deploy-status body is all there

    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["productionDeploymentId"] == deployment_id
    assert project["productionDeployUrl"] == body["url"]

    other = make_tenant(runtime)
    assert client.get(f"/deployments/{deployment_id}", headers=other.headers).status_code == 404


def test_the_status_shows_the_newest_log_lines_oldest_first_as_the_details_do(client, runtime, tenant):
    deployment_id = queued_deployment(runtime, tenant)
    with transaction(runtime.sessions) as session:
        session.add_all(
            DeploymentLog(deployment_id=deployment_id, step="build", message=f"line {n}") for n in range(150)
        )
    newest = [f"line {n}" for n in range(150 - runtime.settings.status_log_lines, 150)]

    status = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
    details = client.get(f"/deployments/{deployment_id}", headers=tenant.headers).get_json()

    assert status["logs"] == newest
    assert details["logs"] == newest
    assert list(status["steps"]) == ["validate", "sync", "sandbox", "build", "deploy", "cleanup"]
    assert {name: step["status"] for name, step in status["steps"].items()} == dict.fromkeys(
        status["steps"], "pending"
    )
    assert details["steps"] == status["steps"]


def test_log_pages_continue_from_their_cursor(client, tenant, worker):
    deployment_id = deploy_completed(client, tenant, SITE)
    everything = client.get(f"/deployments/{deployment_id}/logs", headers=tenant.headers).get_json()
    lines = everything["lines"]
    assert everything["finished"] is True
    assert len(lines) > 6
    ids = [line["id"] for line in lines]
    assert ids == sorted(ids)
    assert lines[-1]["message"].startswith("Deployment completed")

    rest = client.get(
        f"/deployments/{deployment_id}/logs?cursor={ids[2]}&limit=3", headers=tenant.headers
    ).get_json()
    assert [line["id"] for line in rest["lines"]] == ids[3:6]
    assert rest["nextCursor"] == ids[5]


def _follow(client, tenant, deployment_id, headers=None):
    response = client.get(
        f"/deployments/{deployment_id}/logs?follow=1",
        headers={**tenant.headers, "Accept": "text/event-stream", **(headers or {})},
        buffered=False,
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    return response


@pytest.mark.stack
@pytest.mark.slow
def test_live_logs_stream_a_running_build_and_resume_after_the_last_event_id(client, runtime, tenant, worker):
    deployment_id = deploy(client, tenant, slow_printing_build(8, 0.4), replaceFiles=True)
    wait_for_step(client, tenant, deployment_id, "build", "in_progress")

    response = _follow(client, tenant, deployment_id)
    events = []
    status_at_first_tick = None
    for event in parse_sse(response.response):
        if event is None:
            continue
        events.append(event)
        if status_at_first_tick is None and event.event == "log" and event.data["message"] == "tick 1":
            with runtime.sessions() as session:
                status_at_first_tick = session.get(Deployment, deployment_id).status
    response.close()
    # Streamed as the build printed it, not gathered until the deployment ended.
    assert status_at_first_tick == "in_progress"

    logs = [e for e in events if e.event == "log"]
    ids = [int(e.id) for e in logs]
    assert ids == sorted(set(ids)), "lines out of order or repeated"
    assert [int(e.data["id"]) for e in logs] == ids
    ticks = [e.data["message"] for e in logs if e.data["message"].startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(1, 9)]
    statuses = [e.data["currentStep"] for e in events if e.event == "status"]
    assert "build" in statuses
    assert statuses[-1] is None
    assert events[-1].event == "end"
    assert events[-1].data["status"] == "completed"

    # A client that lost the stream after the fifth line resumes exactly after it.
    resumed = _follow(client, tenant, deployment_id, {"Last-Event-ID": str(ids[4])})
    again = [e for e in parse_sse(resumed.response) if e is not None and e.event == "log"]
    resumed.close()
    assert [int(e.id) for e in again] == ids[5:]


def test_redeploy_builds_the_same_source_again_without_uploads(client, runtime, tenant, worker):
    project = new_project(runtime, tenant)
    original = deploy_completed(client, tenant, SITE, project_id=project)
    deploy_completed(client, tenant, {"index.html": "<h1>v2</h1>"}, project_id=project, replaceFiles=True)

    response = client.post(f"/deployments/{original}/redeploy", headers=tenant.headers)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["redeployOf"] == original
    assert body["deploymentId"] != original
    status = wait_for(client, tenant, body["deploymentId"])
    assert status["status"] == "completed"

    with runtime.sessions() as session:
        old, new = session.get(Deployment, original), session.get(Deployment, body["deploymentId"])
        assert new.source_manifest == old.source_manifest
        assert new.request["redeployOf"] == original
    assert client.get(f"/sites/{project}/").get_data(as_text=True) == "<h1>v1</h1>"
    detail = client.get(f"/deployments/{body['deploymentId']}", headers=tenant.headers).get_json()
    assert detail["redeployOf"] == original


def test_redeploy_is_409_while_the_project_has_a_deployment_running(client, runtime, tenant, worker):
    project = new_project(runtime, tenant)
    done = deploy_completed(client, tenant, SITE, project_id=project)
    running = deploy(client, tenant, slow_printing_build(20, 0.25), project_id=project, replaceFiles=True)
    try:
        response = client.post(f"/deployments/{done}/redeploy", headers=tenant.headers)
        assert response.status_code == 409
        assert response.get_json()["error"] == "DEPLOYMENT_IN_PROGRESS"
    finally:
        client.post(f"/deployments/{running}/cancel", headers=tenant.headers)


def _deploy_with_key(client, tenant, body, key):
    return client.post("/deploy", json=body, headers={**tenant.headers, "Idempotency-Key": key})


@pytest.mark.stack
def test_ten_concurrent_posts_with_one_idempotency_key_make_one_deployment(app, runtime, tenant):
    project = new_project(runtime, tenant)
    body = {"projectId": project, "initFiles": text_files(SITE)}
    start = threading.Barrier(10)

    def post(_index: int):
        client = app.test_client()
        start.wait()
        return _deploy_with_key(client, tenant, body, "release-2026-11-28")

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(post, range(10)))

    assert [r.status_code for r in responses] == [202] * 10, [r.get_json() for r in responses]
    ids = {r.get_json()["deploymentId"] for r in responses}
    assert len(ids) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    with runtime.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(Deployment).where(Deployment.project_id == project)
        )
    assert count == 1


def test_idempotency_key_with_another_body_is_422_and_other_keys_are_independent(
    client, runtime, tenant, worker
):
    project = new_project(runtime, tenant)
    body = {"projectId": project, "initFiles": text_files(SITE)}
    first = _deploy_with_key(client, tenant, body, "k-1")
    assert first.status_code == 202
    deployment_id = first.get_json()["deploymentId"]
    wait_for(client, tenant, deployment_id)

    # Same body in another key order is the same request.
    same = _deploy_with_key(client, tenant, {"initFiles": body["initFiles"], "projectId": project}, "k-1")
    assert same.status_code == 202
    assert same.get_json()["deploymentId"] == deployment_id
    assert same.get_json()["status"] == "completed"

    changed = _deploy_with_key(client, tenant, {**body, "replaceFiles": True}, "k-1")
    assert changed.status_code == 422
    error = changed.get_json()
    assert error["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert error["success"] is False

    # Keys belong to an organisation: another one may use the same key for its own deployment.
    other = make_tenant(runtime)
    theirs = _deploy_with_key(
        client, other, {"projectId": other.project_id, "initFiles": body["initFiles"]}, "k-1"
    )
    assert theirs.status_code == 202
    assert theirs.get_json()["deploymentId"] != deployment_id

    assert _deploy_with_key(client, tenant, body, "x" * 300).status_code == 400


def test_an_idempotency_key_older_than_a_day_is_free_again(client, runtime, tenant):
    from libra_deploy.models import IdempotencyKey
    from libra_deploy.retention import collect_garbage

    project = new_project(runtime, tenant)
    body = {"projectId": project, "initFiles": text_files(SITE)}
    first = _deploy_with_key(client, tenant, body, "yesterday").get_json()["deploymentId"]
    client.post(f"/deployments/{first}/cancel", headers=tenant.headers)
    with transaction(runtime.sessions) as session:
        row = session.get(IdempotencyKey, (tenant.org_id, "yesterday"))
        row.created_at = utcnow() - timedelta(hours=25)

    again = _deploy_with_key(client, tenant, {**body, "replaceFiles": True}, "yesterday")
    assert again.status_code == 202
    assert again.get_json()["deploymentId"] != first
    client.post(f"/deployments/{again.get_json()['deploymentId']}/cancel", headers=tenant.headers)

    with transaction(runtime.sessions) as session:
        session.get(IdempotencyKey, (tenant.org_id, "yesterday")).created_at = utcnow() - timedelta(hours=25)
    collect_garbage(runtime)
    with runtime.sessions() as session:
        assert session.get(IdempotencyKey, (tenant.org_id, "yesterday")) is None
