"""Failure is normal: retries, dead letters and their replay, cancel; on every broker."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select, update

from libra_deploy import dead_letters
from libra_deploy.auth import Principal
from libra_deploy.db import transaction, utcnow
from libra_deploy.deployments import DeployRequest, start_deployment
from libra_deploy.errors import ProviderError, StepError
from libra_deploy.models import DeadLetter, Deployment, DeploymentStep, Project, QuotaLedger, new_id
from libra_deploy.steps import STEPS
from libra_deploy.steps.runner import Outcome, StepRun, fail_attempt, run_step
from tasks import dead_letters as broker_dead_letters
from tasks.recovery import publish_dead_letter
from tests.conftest import STACK
from tests.fakes import FaultySandbox, GatedTarget
from tests.helpers import (
    build_processes,
    cli,
    custom_runtime,
    deploy,
    deploy_completed,
    make_tenant,
    queued_deployment,
    sleeping_build,
    use_sandbox_provider,
    wait_for,
    wait_for_step,
)

pytestmark = pytest.mark.stack

T = TypeVar("T")

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


@pytest.fixture(scope="module")
def roomy(settings, runtime):
    """A runtime on the test database with room for every sandbox, for steps run in this process:
    no slot another test still holds makes a sandbox step wait."""
    with custom_runtime(settings, max_concurrent_deployments=10_000) as roomy_runtime:
        yield roomy_runtime


def _dead_lettered_at_sandbox(runtime, tenant) -> tuple[str, DeadLetter]:
    """A deployment whose sandbox provider answers 503 on each of its three attempts, as the worker
    runs them: failed, dead-lettered (the letter on the broker too), its cleanup still to run."""
    deployment_id = queued_deployment(runtime, tenant, files=SITE)
    for step in ("validate", "sync"):
        assert run_step(runtime, step, deployment_id, f"test-{step}").outcome is Outcome.RAN
    FaultySandbox.fail(tenant.project_id)
    for _ in range(3):
        with pytest.raises(ProviderError) as failed:
            run_step(runtime, "sandbox", deployment_id, "test-sandbox")
        verdict = fail_attempt(runtime, "sandbox", deployment_id, failed.value)
    FaultySandbox.heal(tenant.project_id)
    assert verdict.final
    assert verdict.dead_letter is not None
    assert publish_dead_letter(runtime, verdict.dead_letter.id, verdict.dead_letter.message)
    return deployment_id, verdict.dead_letter


def _replay(runtime, letter_id: str, *, from_start: bool = False) -> dead_letters.Replay:
    """What ``dlq replay`` commits before it publishes."""
    with transaction(runtime.sessions) as session:
        letter = dead_letters.get(session, letter_id)
        return dead_letters.prepare_replay(session, runtime.settings, letter, from_start=from_start)


def test_only_a_failed_deployment_is_replayed_and_a_replay_closes_its_letter_at_once(
    client, worker, runtime, roomy, faulty
):
    deployment_id, letter = _dead_lettered_at_sandbox(roomy, faulty)
    refused_line = f"libra-deploy: not replaying {letter.id}: deployment {deployment_id} is failed"

    # Its cleanup is still on its way: run on a replayed deployment, it would complete it unbuilt.
    early = cli("dlq", "replay", letter.id)
    assert early.returncode == 1
    assert early.stderr.strip().splitlines()[-1] == (
        f"{refused_line} and its cleanup has not run yet; replay it once the cleanup has completed"
    )
    assert run_step(roomy, "cleanup", deployment_id, "test-cleanup").outcome is Outcome.RAN

    # Queued again and closed in one transaction: the publish that follows may fail (the outbox relay
    # publishes it then), and the letter, still on the broker, is no longer listed nor replayed.
    plan = _replay(roomy, letter.id)
    assert (plan.deployment_id, plan.start, plan.closed) == (deployment_id, "sandbox", (letter.id,))
    with runtime.sessions() as session:
        closed = session.get(DeadLetter, letter.id)
        assert (closed.replayed_at is not None, closed.replay_count) == (True, 1)
    assert letter.id in {envelope["id"] for envelope in broker_dead_letters.peek()}
    assert letter.id not in {entry["id"] for entry in json.loads(cli("dlq", "list", "--json").stdout)}
    again = cli("dlq", "replay", letter.id)
    assert again.returncode == 1
    assert "not in the queue" in again.stderr

    # Another dead letter of the deployment that only the broker holds is refused while the
    # deployment is queued, then while it runs: a second chain would run its steps twice at once.
    copy = {**letter.message, "id": new_id("dl")}
    broker_dead_letters.publish(copy)
    try:
        queued = cli("dlq", "replay", copy["id"])
        assert queued.returncode == 1
        assert queued.stderr.strip().splitlines()[-1] == (
            f"libra-deploy: not replaying {copy['id']}: "
            f"deployment {deployment_id} is queued; only a failed deployment can be replayed"
        )
        assert run_step(roomy, "sandbox", deployment_id, "replay-sandbox").outcome is Outcome.RAN
        every = cli("dlq", "replay", "--all")
        assert every.returncode == 1
        assert (
            f"libra-deploy: not replaying {copy['id']}: "
            f"deployment {deployment_id} is in_progress; only a failed deployment can be replayed"
        ) in every.stderr.splitlines()
        assert letter.id not in every.stderr
        assert deployment_id not in every.stdout.split()
    finally:
        broker_dead_letters.take(lambda envelope: envelope["id"] in (letter.id, copy["id"]))

    # The running deployment was left as it was: its step done once, its slot held.
    with runtime.sessions() as session:
        deployment = session.get(Deployment, deployment_id)
        sandbox = next(row for row in deployment.steps if row.step == "sandbox")
        assert (deployment.status, sandbox.status, sandbox.attempts) == ("in_progress", "completed", 1)
        assert deployment.slot_acquired_at is not None
        assert deployment.slot_released_at is None
    for step in ("build", "deploy", "cleanup"):
        assert run_step(roomy, step, deployment_id, f"replay-{step}").outcome is Outcome.RAN
    assert wait_for(client, faulty, deployment_id)["status"] == "completed"


def test_a_replay_long_after_the_first_run_began_has_a_whole_time_budget(client, runtime, roomy, faulty):
    deployment_id, letter = _dead_lettered_at_sandbox(roomy, faulty)
    assert run_step(roomy, "cleanup", deployment_id, "test-cleanup").outcome is Outcome.RAN
    # The operator replays it long after its first run began: more than MAX_DEPLOYMENT_TIMEOUT ago.
    first_run = utcnow() - timedelta(seconds=2 * roomy.settings.deployment_timeout_s)
    with transaction(runtime.sessions) as session:
        session.execute(update(Deployment).where(Deployment.id == deployment_id).values(started_at=first_run))

    replayed_at = utcnow()
    _replay(roomy, letter.id, from_start=True)
    broker_dead_letters.take(lambda envelope: envelope["id"] == letter.id)  # as dlq replay does

    queued = client.get(f"/deploy-status?id={deployment_id}", headers=faulty.headers).get_json()
    assert (queued["status"], queued["startedAt"], queued["finishedAt"]) == ("queued", None, None)
    outcomes = [run_step(roomy, step, deployment_id, f"replay-{step}").outcome for step in STEPS]
    assert outcomes == [Outcome.RAN] * len(STEPS)
    status = client.get(f"/deploy-status?id={deployment_id}", headers=faulty.headers).get_json()
    assert status["status"] == "completed", status
    # startedAt is when the replay began to run: the run the client follows now.
    with runtime.sessions() as session:
        assert session.get(Deployment, deployment_id).started_at >= replayed_at


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


@pytest.fixture(scope="module")
def gated(settings, runtime):
    """A runtime on the test database whose deploy target is the local one with gates
    (tests.fakes.GatedTarget), for steps run in this process as a worker runs them."""
    with custom_runtime(settings, deploy_target=GatedTarget.name) as gated_runtime:
        yield gated_runtime


def _run_until_deploy(runtime, deployment_id: str) -> None:
    for step in ("validate", "sync", "sandbox", "build"):
        assert run_step(runtime, step, deployment_id, f"test-{step}").outcome is Outcome.RAN


def _ledger(runtime, deployment_id: str) -> Counter[str]:
    with runtime.sessions() as session:
        return Counter(session.scalars(select(QuotaLedger.kind).filter_by(deployment_id=deployment_id)))


def _held_at_publish(
    runtime, project_id: str, deployment_id: str, meanwhile: Callable[[], T]
) -> tuple[Future[StepRun], T]:
    """Run the deploy step in a thread, call ``meanwhile`` while its upload is held, then let it on."""
    gate = GatedTarget.hold(project_id, "publish")
    with ThreadPoolExecutor(1) as pool:
        try:
            deploying = pool.submit(run_step, runtime, "deploy", deployment_id, "test-deploy")
            assert gate.reached.wait(30), "the deploy step never began to publish"
            during = meanwhile()
        finally:
            gate.open()  # the upload goes on, and the step comes to the switch of the live site
    return deploying, during


def test_a_cancel_while_the_deploy_step_publishes_wins_and_nothing_live_changes(
    client, worker, runtime, gated, tenant
):
    live = deploy_completed(client, tenant, {"index.html": "<h1>v1</h1>"})
    deployment_id = queued_deployment(gated, tenant, files={"index.html": "<h1>v2</h1>"})
    _run_until_deploy(gated, deployment_id)
    deploying, response = _held_at_publish(
        gated,
        tenant.project_id,
        deployment_id,
        lambda: client.post(f"/deployments/{deployment_id}/cancel", headers=tenant.headers),
    )
    outcome = deploying.result(timeout=60).outcome

    assert response.status_code == 202, response.get_json()
    assert outcome is Outcome.CANCELLED
    status = wait_for_step(client, tenant, deployment_id, "cleanup", "completed")  # the worker's
    assert status["status"] == "cancelled"
    assert status["steps"]["deploy"] | {"timestamp": None} == {
        "status": "failed",
        "attempts": 1,
        "error": "cancelled",
        "timestamp": None,
    }
    # Nothing live changed: the site, the project's live deployment and status are v1's.
    assert gated.target.live_deployment(tenant.project_id) == live
    assert client.get(f"/sites/{tenant.project_id}/").get_data(as_text=True) == "<h1>v1</h1>"
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert (project["productionDeploymentId"], project["deploymentStatus"]) == (live, "deployed")
    with runtime.sessions() as session:
        assert session.get(Deployment, deployment_id).live_switch_at is None
    # Its quota unit was given back; v1's is used.
    assert _ledger(runtime, deployment_id) == Counter({"reserve": 1, "release": 1})
    usage = client.get(f"/orgs/{tenant.org_id}/quota", headers=tenant.headers).get_json()
    assert (usage["used"], usage["reserved"]) == (1, 0)


def test_once_the_switch_of_the_live_site_began_a_cancel_is_409_and_the_deployment_completes(
    client, runtime, gated, tenant
):
    deployment_id = queued_deployment(gated, tenant, files={"index.html": "<h1>going live</h1>"})
    _run_until_deploy(gated, deployment_id)

    def refused() -> None:
        response = client.post(f"/deployments/{deployment_id}/cancel", headers=tenant.headers)
        assert response.status_code == 409, response.get_json()
        body = response.get_json()
        assert body["error"] == "DEPLOYMENT_LIVE"
        assert "already live or going live" in body["message"]

    # The first switch fails at the target after the step took the right to it (a 503): the
    # pointer may or may not have moved, so the deployment's retry must finish what it began.
    GatedTarget.fail_next_activate(tenant.project_id)
    with pytest.raises(ProviderError) as failed:
        run_step(gated, "deploy", deployment_id, "test-deploy")
    assert fail_attempt(gated, "deploy", deployment_id, failed.value).final is False
    refused()

    # The retry (the same task id, as Celery retries) passes its own mark; held at the switch itself.
    gate = GatedTarget.hold(tenant.project_id, "activate")
    with ThreadPoolExecutor(1) as pool:
        try:
            deploying = pool.submit(run_step, gated, "deploy", deployment_id, "test-deploy")
            assert gate.reached.wait(30), "the deploy step's retry never came to the switch"
            refused()
        finally:
            gate.open()
        assert deploying.result(timeout=60).outcome is Outcome.RAN

    refused()  # with the cleanup to come
    assert run_step(gated, "cleanup", deployment_id, "test-cleanup").outcome is Outcome.RAN

    status = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
    assert status["status"] == "completed", status
    assert status["steps"]["deploy"]["attempts"] == 2
    assert client.get(f"/sites/{tenant.project_id}/").get_data(as_text=True) == "<h1>going live</h1>"
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert (project["productionDeploymentId"], project["deploymentStatus"]) == (deployment_id, "deployed")
    assert _ledger(runtime, deployment_id) == Counter({"reserve": 1, "consume": 1})
    usage = client.get(f"/orgs/{tenant.org_id}/quota", headers=tenant.headers).get_json()
    assert (usage["used"], usage["reserved"]) == (1, 0)


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


def test_a_domain_another_project_takes_during_the_upload_fails_the_step_before_the_switch(
    client, worker, runtime, gated, tenant
):
    domain = f"www.{uuid.uuid4().hex[:12]}.io"
    rival = make_tenant(runtime)
    ours = queued_deployment(gated, tenant, files={"index.html": "<h1>ours</h1>"}, custom_domain=domain)
    theirs = queued_deployment(gated, rival, files={"index.html": "<h1>theirs</h1>"}, custom_domain=domain)
    for deployment_id in (ours, theirs):
        _run_until_deploy(gated, deployment_id)
    # The domain was free when our deploy step began; the rival takes it during our upload.
    deploying, rivals = _held_at_publish(
        gated, tenant.project_id, ours, lambda: run_step(gated, "deploy", theirs, "test-deploy")
    )
    assert rivals.outcome is Outcome.RAN
    with pytest.raises(StepError) as refused:
        deploying.result(timeout=60)

    assert (refused.value.code, refused.value.retryable) == ("DOMAIN_TAKEN", False)
    # Nothing of ours was switched or taken: the rival's site and domain stand.
    assert gated.target.live_deployment(tenant.project_id) is None
    assert gated.target.live_deployment(rival.project_id) == theirs
    with runtime.sessions() as session:
        assert session.get(Deployment, ours).live_switch_at is None
        assert session.get(Project, tenant.project_id).custom_domain is None
        assert session.get(Project, rival.project_id).custom_domain == domain


def test_a_copy_of_a_running_steps_message_with_its_own_task_id_is_dropped(client, worker, runtime, tenant):
    # A redelivered chain carries the ids it was first published with, and a retry shares its id
    # with the message it retries: the same id is no proof that the step's worker is gone.
    from tasks.steps import build

    marker = f"same-id-{uuid.uuid4().hex}"
    deployment_id = deploy(client, tenant, sleeping_build(120, marker))
    _wait_started(client, tenant, deployment_id, marker)
    with runtime.sessions() as session:
        task_id = session.scalars(
            select(DeploymentStep.task_id).where(
                DeploymentStep.deployment_id == deployment_id, DeploymentStep.step == "build"
            )
        ).one()

    build.apply_async((deployment_id,), task_id=task_id)  # the running message's own copy
    time.sleep(2)

    running = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
    assert running["steps"]["build"] == running["steps"]["build"] | {"status": "in_progress", "attempts": 1}
    assert running["logs"].count("build started") == 1
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

    # The deployment is still queued (the reaper publishes again one no worker took): not replayed.
    queued = cli("dlq", "replay", task_id)
    assert queued.returncode == 1
    assert queued.stderr.strip().splitlines()[-1] == (
        f"libra-deploy: not replaying {task_id}: "
        f"deployment {deployment.id} is queued; only a failed deployment can be replayed"
    )
    # It fails for good meanwhile, with a dead letter of its own; the broker's replays it from there.
    use_sandbox_provider(runtime, tenant.project_id, "faulty")
    for step in ("validate", "sync"):
        assert run_step(runtime, step, deployment.id, f"test-{step}").outcome is Outcome.RAN
    FaultySandbox.fail(tenant.project_id)
    try:
        for _ in range(3):
            with pytest.raises(ProviderError) as failed:
                run_step(runtime, "sandbox", deployment.id, "test-sandbox")
            verdict = fail_attempt(runtime, "sandbox", deployment.id, failed.value)
    finally:
        FaultySandbox.heal(tenant.project_id)
    assert verdict.dead_letter is not None
    assert run_step(runtime, "cleanup", deployment.id, "test-cleanup").outcome is Outcome.RAN

    replayed = cli("dlq", "replay", task_id)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.split() == [deployment.id]
    assert wait_for(client, tenant, deployment.id)["status"] == "completed"
    listed = {e["id"] for e in json.loads(cli("dlq", "list", "--json").stdout)}
    # The deployment's own letter was closed with the replay: it records a failure the replay superseded.
    assert {task_id, verdict.dead_letter.id}.isdisjoint(listed)
