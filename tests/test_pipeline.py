"""A deployment runs through its six steps on a real broker, a real worker and a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import deploy, wait_for, wait_for_step

pytestmark = pytest.mark.stack

SITE = {"index.html": "<!doctype html><h1>Hello from libra</h1>", "css/site.css": "h1 { color: teal }"}


def test_a_small_site_is_deployed_and_served(client, worker, tenant):
    deployment_id = deploy(client, tenant, SITE)

    status = wait_for(client, tenant, deployment_id)

    assert status["status"] == "completed", status
    assert status["progress"] == 100
    assert {s["status"] for s in status["steps"].values()} == {"completed"}
    assert status["url"] == f"http://testserver/sites/{tenant.project_id}/"
    page = client.get(f"/sites/{tenant.project_id}/")
    assert page.status_code == 200
    assert page.get_data(as_text=True) == SITE["index.html"]
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    css = client.get(f"/sites/{tenant.project_id}/css/site.css")
    assert css.get_data(as_text=True) == SITE["css/site.css"]
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["deploymentStatus"] == "deployed"
    assert project["productionDeploymentId"] == deployment_id


def test_status_reports_every_step_with_timestamps_and_logs(client, worker, tenant):
    deployment_id = deploy(client, tenant, SITE)

    status = wait_for(client, tenant, deployment_id)

    assert list(status["steps"]) == ["validate", "sync", "sandbox", "build", "deploy", "cleanup"]
    assert all("timestamp" in step for step in status["steps"].values())
    assert any("Publishing" in line for line in status["logs"])
    assert status["startedAt"] <= status["finishedAt"]


def test_a_second_deployment_merges_changes_over_the_stored_files(client, worker, tenant):
    wait_for(client, tenant, deploy(client, tenant, SITE))
    body = {
        "projectId": tenant.project_id,
        "initFiles": [
            {"path": "about.html", "content": "YWJvdXQ=", "encoding": "base64"},
            {"path": "css/site.css", "delete": True},
        ],
    }
    response = client.post("/deploy", json=body, headers=tenant.headers)
    assert response.status_code == 202
    second = response.get_json()["deploymentId"]

    assert wait_for(client, tenant, second)["status"] == "completed"
    assert client.get(f"/sites/{tenant.project_id}/about.html").get_data() == b"about"
    assert client.get(f"/sites/{tenant.project_id}/").status_code == 200
    assert client.get(f"/sites/{tenant.project_id}/css/site.css").status_code == 404


def _package(scripts: dict[str, str], **extra: object) -> str:
    return json.dumps({"name": "site", "version": "1.0.0", "scripts": scripts, **extra})


BUILD_SCRIPT = """
const fs = require('fs');
fs.mkdirSync('dist/assets', { recursive: true });
const title = fs.readFileSync('src/title.txt', 'utf8').trim();
fs.writeFileSync('dist/index.html', `<h1>${title}</h1>`);
fs.writeFileSync('dist/assets/app-3f9a1c2b.js', 'console.log("built")');
console.log('wrote dist/');
"""


def test_a_package_json_build_writes_dist_and_it_is_served(client, worker, tenant):
    files = {
        "package.json": _package({"build": "node build.js"}),
        "build.js": BUILD_SCRIPT,
        "src/title.txt": "Built by node",
    }
    deployment_id = deploy(client, tenant, files)

    status = wait_for(client, tenant, deployment_id)

    assert status["status"] == "completed", status
    assert "wrote dist/" in status["logs"]
    page = client.get(f"/sites/{tenant.project_id}/")
    assert page.get_data(as_text=True) == "<h1>Built by node</h1>"
    asset = client.get(f"/sites/{tenant.project_id}/assets/app-3f9a1c2b.js")
    assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert client.get(f"/sites/{tenant.project_id}/build.js").status_code == 404


def test_a_build_that_exits_1_fails_with_the_log_tail_and_the_sandbox_is_gone(
    client, worker, tenant, settings
):
    script = (
        "console.log('compiling...'); console.error('src/app.ts: syntax error near line 3'); process.exit(1);"
    )
    files = {"package.json": _package({"build": "node build.js"}), "build.js": script}
    deployment_id = deploy(client, tenant, files)

    status = wait_for(client, tenant, deployment_id)

    assert status["status"] == "failed"
    assert status["errorCode"] == "BUILD_FAILED"
    assert status["error"].startswith("build failed: `npm run build` exited with code 1")
    assert "src/app.ts: syntax error near line 3" in status["error"]
    assert status["steps"]["build"]["status"] == "failed"
    assert status["steps"]["deploy"]["status"] == "skipped"
    wait_for_step(client, tenant, deployment_id, "cleanup", "completed")
    sandboxes = Path(settings.data_dir, "sandboxes")
    assert not list(sandboxes.glob(f"*{deployment_id}*"))
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["deploymentStatus"] == "failed"


def test_a_step_loads_only_the_bulky_columns_it_reads(runtime, tenant):
    """A big site's request and manifests are megabytes of JSON: a step's locking SELECT loads those
    its execute reads (steps.READS) when it begins, and none of them when it records its result."""
    import dataclasses

    from sqlalchemy import event

    from libra_deploy.models import Deployment
    from libra_deploy.runtime import Runtime
    from libra_deploy.steps import READS, STEPS
    from libra_deploy.steps.runner import Outcome, run_step
    from tests.helpers import queued_deployment

    bulky = ("deployments.request", "deployments.history_messages", "deployments.source_manifest",
             "deployments.output_manifest", "projects.source_manifest")  # fmt: skip
    # Its own runtime, so that no sandbox slot another test still holds makes the sandbox step wait.
    own = Runtime.from_settings(dataclasses.replace(runtime.settings, max_concurrent_deployments=10_000))
    locking: list[str] = []

    @event.listens_for(own.engine, "before_cursor_execute")
    def capture(_conn, _cursor, statement, _params, _context, _many) -> None:
        if "FROM deployments JOIN deployment_steps" in statement:
            locking.append(statement)

    try:
        deployment_id = queued_deployment(own, tenant)
        locking.clear()
        outcomes = [run_step(own, step, deployment_id, f"task-{step}").outcome for step in STEPS]
        with own.sessions() as session:
            deployment = session.get(Deployment, deployment_id)
            assert deployment is not None
            status, source, output = deployment.status, deployment.source_manifest, deployment.output_manifest
    finally:
        own.close()

    assert outcomes == [Outcome.RAN] * len(STEPS)
    loaded = [{column for column in bulky if column in statement} for statement in locking]
    expected = []
    for step in STEPS:
        expected += [{f"{c.class_.__tablename__}.{c.key}" for c in READS[step]}, set()]
    assert loaded == expected
    # What the records assigned without loading was written all the same.
    assert status == "completed"
    assert set(source) == set(output) == {"a.txt"}
