"""Failure is normal: retries, dead letters and their replay, cancel; on every broker."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from libra_deploy.auth import Principal
from libra_deploy.db import transaction
from libra_deploy.deployments import DeployRequest, start_deployment
from libra_deploy.models import DeadLetter, Deployment
from tasks import dead_letters as broker_dead_letters
from tests.conftest import STACK
from tests.fakes import FaultySandbox
from tests.helpers import (
    build_processes,
    cli,
    deploy,
    make_tenant,
    sleeping_build,
    use_sandbox_provider,
    wait_for,
    wait_for_step,
)

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
    # On the broker itself, in deployment-dlq (the listing also shows the database's record).
    assert letter.id in {envelope["id"] for envelope in broker_dead_letters.peek()}
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


def _wait_started(client, tenant, deployment_id: str, marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
        if "build started" in body["logs"] and build_processes(marker):
            return
        time.sleep(0.05)
    raise AssertionError(f"the build of {deployment_id} never started")


def test_cancel_stops_a_running_build_within_seconds(client, worker, runtime, tenant):
    marker = f"cancel-{uuid.uuid4().hex}"
    deployment_id = deploy(client, tenant, sleeping_build(120, marker))
    _wait_started(client, tenant, deployment_id, marker)

    response = client.post(f"/deployments/{deployment_id}/cancel", headers=tenant.headers)

    assert response.status_code == 202
    assert response.get_json()["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while build_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not build_processes(marker), "the build still runs 5 s after the cancel"
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


def test_a_redelivered_chain_of_a_completed_deployment_changes_nothing(client, worker, runtime, tenant):
    from tasks.pipeline import start_deployment as publish

    deployment_id = deploy(client, tenant, SITE)
    before = wait_for_step(client, tenant, deployment_id, "cleanup", "completed")

    publish(deployment_id)  # every step's message delivered a second time

    time.sleep(2)
    after = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
    assert after["steps"] == before["steps"]
    assert after["status"] == "completed"
    assert sum(line.startswith("Published") for line in after["logs"]) == 1


def test_a_duplicate_message_for_a_running_step_is_dropped(client, worker, runtime, tenant):
    from tasks.pipeline import start_deployment as publish

    marker = f"duplicate-{uuid.uuid4().hex}"
    deployment_id = deploy(client, tenant, sleeping_build(120, marker))
    _wait_started(client, tenant, deployment_id, marker)

    publish(deployment_id, "build")  # a copy of the build message while the build runs
    time.sleep(2)

    running = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
    assert running["steps"]["build"] == running["steps"]["build"] | {"status": "in_progress", "attempts": 1}
    assert running["logs"].count("build started") == 1  # one build, not two
    client.post(f"/deployments/{deployment_id}/cancel", headers=tenant.headers)
    wait_for_step(client, tenant, deployment_id, "cleanup", "completed")
    assert not build_processes(marker)


@pytest.mark.skipif(
    STACK != "postgres-rabbitmq",
    reason="only RabbitMQ dead-letters messages itself (x-dead-letter-exchange on the work queue); "
    "Redis and the embedded broker drop what they reject, which is why the task layer publishes dead letters",
)
def test_a_message_the_broker_dead_letters_itself_can_be_listed_and_replayed(client, worker, runtime, tenant):
    from kombu import Queue
    from kombu import uuid as task_uuid

    from tasks import app

    principal = Principal(tenant.org_id, tenant.user_id, "test")
    with transaction(runtime.sessions) as session:
        deployment = start_deployment(
            session,
            runtime.settings,
            runtime.store,
            principal,
            DeployRequest(
                project_id=tenant.project_id, init_files=[{"path": "index.html", "content": "native"}]
            ),
        )
    # A Celery task message that expires in the queue before any worker takes it: RabbitMQ moves it
    # to deployment-dlx -> deployment-dlq on its own, with reason "expired".
    # The work queue carries the dead-letter exchange on the broker itself...
    queue = app.conf.task_queues[0]
    vhost = os.environ["CELERY_BROKER_URL"].rsplit("/", 1)[1]
    listing = subprocess.run(
        ["rabbitmqctl", "list_queues", "-p", vhost, "name", "arguments", "--formatter", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    declared = {q["name"]: q["arguments"] for q in json.loads(listing.stdout)}[queue.name]
    arguments = {name: value for name, _type, value in declared}
    assert arguments["x-dead-letter-exchange"] == "deployment-dlx"
    assert arguments["x-dead-letter-routing-key"] == app.conf.dead_letter_queue.name
    # ...so a task message the broker gives up on (here: it expires in a queue declared the same way,
    # where no worker takes it) moves to deployment-dlq without any code of ours.
    holding = Queue(
        f"{queue.name}-held",
        queue.exchange,
        routing_key=f"{queue.name}-held",
        queue_arguments=queue.queue_arguments,
        auto_delete=True,
    )
    task_id = task_uuid()
    message = app.amqp.as_task_v2(task_id, "deploy.validate", args=(deployment.id,), kwargs={})
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            message.body,
            exchange=holding.exchange,
            routing_key=holding.routing_key,
            declare=[holding],
            headers=message.headers,
            serializer="json",
            expiration=0.2,
            **message.properties,
        )

    def listed() -> dict | None:
        entries = json.loads(cli("dlq", "list", "--json").stdout)
        return next((e for e in entries if e["id"] == task_id), None)

    deadline = time.monotonic() + 30
    while (entry := listed()) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert entry is not None
    assert entry["error"]["type"] == "DeadLetteredByBroker"
    assert "expired" in entry["error"]["message"]
    assert (entry["deploymentId"], entry["step"]) == (deployment.id, "validate")

    replayed = cli("dlq", "replay", task_id)
    assert replayed.returncode == 0, replayed.stderr
    assert wait_for(client, tenant, deployment.id)["status"] == "completed"
    assert task_id not in {e["id"] for e in json.loads(cli("dlq", "list", "--json").stdout)}
