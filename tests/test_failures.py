"""Failure is normal: retries, dead letters and their replay, cancel; on every broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from libra_deploy.auth import Principal
from libra_deploy.db import transaction
from libra_deploy.deployments import DeployRequest, start_deployment
from libra_deploy.models import DeadLetter, Deployment
from tests.fakes import FaultySandbox
from tests.helpers import cli, deploy, make_tenant, use_sandbox_provider, wait_for, wait_for_step

pytestmark = pytest.mark.stack

SITE = {"index.html": "<h1>resilient</h1>"}


@pytest.fixture
def faulty(runtime, tenant):
    use_sandbox_provider(runtime, tenant.project_id, "faulty")
    yield tenant
    FaultySandbox.heal(tenant.project_id)


def _dead_letters(runtime, deployment_id: str) -> list[DeadLetter]:
    with runtime.sessions() as session:
        return list(session.query(DeadLetter).filter_by(deployment_id=deployment_id))


def test_a_step_that_fails_twice_then_succeeds_completes_after_three_attempts(
    client, worker, runtime, faulty
):
    FaultySandbox.fail(faulty.project_id, times=2)

    status = wait_for(client, faulty, deploy(client, faulty, SITE))

    assert status["status"] == "completed", status
    assert status["steps"]["sandbox"]["attempts"] == 3
    assert status["steps"]["build"]["attempts"] == 1
    assert sum("attempt" in line and "failed" in line for line in status["logs"]) == 2
    assert _dead_letters(runtime, status["deploymentId"]) == []


def test_a_step_that_always_fails_is_dead_lettered_after_three_attempts(
    client, worker, runtime, settings, faulty
):
    FaultySandbox.fail(faulty.project_id)
    deployment_id = deploy(client, faulty, SITE)

    status = wait_for_step(client, faulty, deployment_id, "cleanup", "completed")

    assert status["status"] == "failed"
    assert status["errorCode"] == "PROVIDER_ERROR"
    assert "503" in status["error"]
    assert status["steps"]["sandbox"] | {"timestamp": None} == {
        "status": "failed",
        "attempts": 3,
        "error": "sandbox provider answered 503 Service Unavailable",
        "timestamp": None,
    }
    assert status["steps"]["build"]["status"] == "skipped"
    assert FaultySandbox.calls[faulty.project_id] == 3
    (letter,) = _dead_letters(runtime, deployment_id)
    assert letter.step == "sandbox"
    assert letter.attempts == 3
    assert letter.published_at is not None
    assert letter.message["task"] == "deploy.sandbox"
    assert letter.message["args"] == [deployment_id]
    assert letter.message["error"]["code"] == "PROVIDER_ERROR"
    listed = json.loads(cli("dlq", "list", "--json").stdout)
    assert letter.id in {entry["id"] for entry in listed}
    assert not list(Path(settings.data_dir, "sandboxes").glob(f"*{deployment_id}*"))


def test_replay_resumes_at_the_failed_step_once_the_cause_is_fixed(client, worker, runtime, faulty):
    FaultySandbox.fail(faulty.project_id)
    deployment_id = deploy(client, faulty, SITE)
    failed = wait_for_step(client, faulty, deployment_id, "cleanup", "completed")
    (letter,) = _dead_letters(runtime, deployment_id)
    FaultySandbox.heal(faulty.project_id)

    replayed = cli("dlq", "replay", letter.id)

    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == deployment_id
    status = wait_for(client, faulty, deployment_id)
    assert status["status"] == "completed", status
    # Earlier steps were not run again: same attempt counts, same timestamps.
    for step in ("validate", "sync"):
        assert status["steps"][step] == failed["steps"][step]
    assert status["steps"]["sandbox"]["attempts"] == 1
    assert client.get(f"/sites/{faulty.project_id}/").get_data(as_text=True) == SITE["index.html"]
    with runtime.sessions() as session:
        assert session.get(DeadLetter, letter.id).replayed_at is not None
    assert letter.id not in {e["id"] for e in json.loads(cli("dlq", "list", "--json").stdout)}
    again = cli("dlq", "replay", letter.id)
    assert again.returncode == 1
    assert "not in the queue" in again.stderr


def test_replay_from_start_runs_every_step_again(client, worker, runtime, faulty):
    FaultySandbox.fail(faulty.project_id)
    deployment_id = deploy(client, faulty, SITE)
    wait_for_step(client, faulty, deployment_id, "cleanup", "completed")
    (letter,) = _dead_letters(runtime, deployment_id)
    FaultySandbox.heal(faulty.project_id)

    assert cli("dlq", "replay", "--from-start", letter.id).returncode == 0

    status = wait_for(client, faulty, deployment_id)
    assert status["status"] == "completed", status
    assert sum(line == "Validating deployment parameters..." for line in status["logs"]) == 2


def test_replay_is_refused_while_the_project_has_another_deployment_running(client, worker, runtime, faulty):
    FaultySandbox.fail(faulty.project_id)
    first = deploy(client, faulty, SITE)
    wait_for_step(client, faulty, first, "cleanup", "completed")
    (letter,) = _dead_letters(runtime, first)
    FaultySandbox.heal(faulty.project_id)
    slow = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "setTimeout(() => { require('fs').mkdirSync('dist'); "
        "require('fs').writeFileSync('dist/index.html', 'x') }, 3000)",
    }
    second = deploy(client, faulty, slow)

    refused = cli("dlq", "replay", letter.id)

    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"libra-deploy: not replaying {letter.id}: "
        f"the project of {first} has another deployment queued or running"
    )
    assert wait_for(client, faulty, second)["status"] == "completed"
    assert cli("dlq", "replay", letter.id).returncode == 0
    assert wait_for(client, faulty, first)["status"] == "completed"


def test_dlq_show_and_purge(client, worker, runtime, faulty):
    FaultySandbox.fail(faulty.project_id)
    deployment_id = deploy(client, faulty, SITE)
    wait_for_step(client, faulty, deployment_id, "cleanup", "completed")
    (letter,) = _dead_letters(runtime, deployment_id)

    shown = json.loads(cli("dlq", "show", letter.id).stdout)
    assert shown["deploymentId"] == deployment_id
    assert shown["step"] == "sandbox"
    table = cli("dlq", "list")
    assert letter.id in table.stdout
    assert "sandbox" in table.stdout

    assert cli("dlq", "purge").returncode != 0  # asks first; no answer is no
    assert cli("dlq", "purge", "--yes").returncode == 0
    assert json.loads(cli("dlq", "list", "--json").stdout) == []
    nothing = cli("dlq", "replay", "--all")
    assert nothing.returncode == 0
    assert nothing.stdout == ""


def _pid_from_logs(client, tenant, deployment_id: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
        for line in body["logs"]:
            if line.startswith("build pid "):
                return int(line.split()[-1])
        time.sleep(0.05)
    raise AssertionError(f"the build of {deployment_id} never printed its pid")


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


SLEEPING_BUILD = {
    "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
    "build.js": "console.log('build pid ' + process.pid); setTimeout(() => {}, 120000);",
}


def test_cancel_stops_a_running_build_within_seconds(client, worker, runtime, tenant):
    deployment_id = deploy(client, tenant, SLEEPING_BUILD)
    pid = _pid_from_logs(client, tenant, deployment_id)

    response = client.post(f"/deployments/{deployment_id}/cancel", headers=tenant.headers)

    assert response.status_code == 202
    assert response.get_json()["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while not _process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_gone(pid), f"build process {pid} still runs 5 s after the cancel"
    status = wait_for_step(client, tenant, deployment_id, "cleanup", "completed")
    assert status["status"] == "cancelled"
    assert status["steps"]["build"]["status"] == "failed"
    assert status["steps"]["deploy"]["status"] == "skipped"
    again = client.post(f"/deployments/{deployment_id}/cancel", headers=tenant.headers)
    assert again.status_code == 200
    assert again.get_json()["status"] == "cancelled"
    # The project is free again.
    next_one = deploy(client, tenant, SITE, replaceFiles=True)
    assert wait_for(client, tenant, next_one)["status"] == "completed"


def test_a_cancelled_queued_deployment_never_starts(client, worker, runtime, tenant):
    from tasks.pipeline import start_deployment as publish

    principal = Principal(tenant.org_id, tenant.user_id, "test")
    with transaction(runtime.sessions) as session:
        deployment = start_deployment(
            session,
            runtime.settings,
            runtime.store,
            principal,
            DeployRequest(project_id=tenant.project_id, init_files=[{"path": "index.html", "content": "x"}]),
        )
    response = client.post(f"/deployments/{deployment.id}/cancel", headers=tenant.headers)
    assert response.status_code == 202
    publish(deployment.id)  # the queued message arrives after the cancel

    status = wait_for_step(client, tenant, deployment.id, "cleanup", "completed")
    assert status["status"] == "cancelled"
    assert status["steps"]["validate"]["status"] == "skipped"
    with runtime.sessions() as session:
        assert session.get(Deployment, deployment.id).started_at is None


def test_cancelling_a_finished_deployment_is_409_and_others_cannot_cancel(client, worker, runtime, tenant):
    deployment_id = deploy(client, tenant, SITE)
    wait_for(client, tenant, deployment_id)
    response = client.post(f"/deployments/{deployment_id}/cancel", headers=tenant.headers)
    assert response.status_code == 409
    assert response.get_json()["error"] == "DEPLOYMENT_FINISHED"
    other = make_tenant(runtime)
    assert client.post(f"/deployments/{deployment_id}/cancel", headers=other.headers).status_code == 404
    assert client.post(f"/deployments/{deployment_id}/cancel").status_code == 401
