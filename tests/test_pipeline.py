"""A deployment runs through its six steps on a real broker, a real worker and a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import STACK
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


def test_post_deploy_leaves_the_projects_manifest_unread(runtime, tenant):
    """Starting a deployment never looks at its project's source manifest (megabytes of JSON for a
    big site): the project is read without it."""
    from sqlalchemy import event

    from tests.helpers import new_project, queued_deployment

    project_id = new_project(runtime, tenant)
    reads: list[str] = []

    def capture(_conn, _cursor, statement, _params, _context, _many) -> None:
        if "FROM projects" in statement:
            reads.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", capture)
    try:
        queued_deployment(runtime, tenant, project_id)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", capture)
    assert reads
    assert not [statement for statement in reads if "projects.source_manifest" in statement]


def test_a_step_loads_only_the_bulky_columns_it_reads(runtime, tenant):
    """A big site's request and manifests are megabytes of JSON: a step's locking statement loads
    those its execute reads (steps.READS) when it begins, and none of them when it completes."""
    import dataclasses
    from collections import defaultdict

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
    step_now = [""]
    locking: dict[str, list[str]] = defaultdict(list)

    @event.listens_for(own.engine, "before_cursor_execute")
    def capture(_conn, _cursor, statement, _params, _context, _many) -> None:
        # The one-statement transitions (PostgreSQL) and the ORM's locking SELECT (the full rule).
        if "WITH locked AS" in statement or "FROM deployments JOIN deployment_steps" in statement:
            locking[step_now[0]].append(statement)

    try:
        deployment_id = queued_deployment(own, tenant)
        outcomes = []
        for step in STEPS:
            step_now[0] = step
            outcomes.append(run_step(own, step, deployment_id, f"task-{step}").outcome)
        with own.sessions() as session:
            deployment = session.get(Deployment, deployment_id)
            assert deployment is not None
            status, source, output = deployment.status, deployment.source_manifest, deployment.output_manifest
    finally:
        own.close()

    assert outcomes == [Outcome.RAN] * len(STEPS)
    for step in STEPS:
        *begun, completed = [
            {column for column in bulky if column in statement} for statement in locking[step]
        ]
        reads = {f"{c.class_.__tablename__}.{c.key}" for c in READS[step]}
        assert begun, step
        assert all(loaded == reads for loaded in begun), step
        assert completed == set(), step
    # What the records assigned without loading was written all the same.
    assert status == "completed"
    assert set(source) == set(output) == {"a.txt"}


@pytest.mark.skipif(STACK == "embedded", reason="SQLite runs the full rule: its round trips cost nothing")
def test_on_postgresql_a_step_begins_in_one_statement_and_completes_in_one(runtime, tenant):
    """A step's first attempt begins with one statement in autocommit (no BEGIN, no COMMIT) and
    completes with one more, in the transaction that holds its record: the transitions are most
    of what the pipeline adds to a bare chain (steps.transitions). The step that asks for a
    sandbox slot, when one is free, begins with one statement too, in a transaction after the lock
    that serialises slot grants."""
    import dataclasses

    from sqlalchemy import event

    from libra_deploy.models import DeploymentLog, DeploymentStep
    from libra_deploy.runtime import Runtime
    from libra_deploy.steps import TITLES
    from libra_deploy.steps.runner import run_step
    from tests.helpers import queued_deployment

    own = Runtime.from_settings(dataclasses.replace(runtime.settings, max_concurrent_deployments=10_000))
    statements: list[tuple[str, str | None]] = []

    @event.listens_for(own.engine, "before_cursor_execute")
    def capture(conn, _cursor, statement, _params, _context, _many) -> None:
        statements.append((statement, conn.get_execution_options().get("isolation_level")))

    try:
        deployment_id = queued_deployment(own, tenant)
        locking: dict[str, list[tuple[str, str | None]]] = {}
        for step in ("validate", "sync", "sandbox"):
            statements.clear()
            run_step(own, step, deployment_id, f"task-{step}")
            locking[step] = [
                (s, isolation) for s, isolation in statements if "FOR UPDATE" in s or "pg_advisory" in s
            ]
        with own.sessions() as session:
            rows = {r.step: r for r in session.query(DeploymentStep).filter_by(deployment_id=deployment_id)}
            lines = [
                m for (m,) in session.query(DeploymentLog.message).filter_by(deployment_id=deployment_id)
            ]
        # To the end, so that the sandbox slot it took is given back for the tests after this one.
        for step in ("build", "deploy", "cleanup"):
            run_step(own, step, deployment_id, f"task-{step}")
    finally:
        own.close()

    for step in ("validate", "sync"):
        # Begun in autocommit and completed in a transaction, each by one CTE; nothing else locks.
        assert [(s.startswith("WITH locked AS"), isolation) for s, isolation in locking[step]] == [
            (True, "AUTOCOMMIT"),
            (True, None),
        ], step
        assert (rows[step].status, rows[step].attempts) == ("completed", 1), step
        assert f"{TITLES[step]}..." in lines
    # A slot was free: the slots' lock, then begun and completed by one CTE each, in transactions.
    begun = [(s.split("(")[0].strip(), isolation) for s, isolation in locking["sandbox"]]
    assert begun == [
        ("SELECT pg_advisory_xact_lock", None),
        ("WITH locked AS", None),
        ("WITH locked AS", None),
    ]
    assert rows["sandbox"].status == "completed"
    assert [r.status for r in rows.values() if r.step not in ("validate", "sync", "sandbox")] == [
        "pending"
    ] * 3
