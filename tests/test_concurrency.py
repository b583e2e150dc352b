"""Concurrency decided by the database: one active deployment per project, the sandbox-slot line."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from threading import Barrier
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update

from libra_deploy import dead_letters
from libra_deploy.db import transaction, utcnow
from libra_deploy.errors import ProviderError
from libra_deploy.models import Deployment, DeploymentStatus
from libra_deploy.recovery import claim_stalled
from libra_deploy.runtime import Runtime
from libra_deploy.steps.runner import Outcome, fail_attempt, run_step
from tests.fakes import FaultySandbox
from tests.helpers import (
    deploy,
    make_tenant,
    new_project,
    queued_deployment,
    service_on,
    sleeping_build,
    text_files,
    use_sandbox_provider,
    wait_for,
    wait_for_step,
)

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def live_url(app):
    from web.server import Server

    server = Server(app, "127.0.0.1", 0)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_twenty_concurrent_posts_give_one_202_and_nineteen_409(live_url, runtime, worker):
    tenant = make_tenant(runtime)
    # A build that takes a few seconds keeps the accepted deployment running while the others arrive,
    # however the threads happen to be scheduled.
    slow_site = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "setTimeout(() => { require('fs').mkdirSync('dist'); "
        "require('fs').writeFileSync('dist/index.html', 'race') }, 3000)",
    }
    body = {"projectId": tenant.project_id, "initFiles": text_files(slow_site)}
    start = Barrier(20)

    def post(_: int) -> requests.Response:
        with requests.Session() as session:
            start.wait()
            return session.post(f"{live_url}/deploy", json=body, headers=tenant.headers, timeout=60)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(post, range(20)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [409] * 19, [r.text for r in responses if r.status_code not in (202, 409)]
    conflict = next(r for r in responses if r.status_code == 409).json()
    assert conflict["success"] is False
    assert conflict["error"] == "DEPLOYMENT_IN_PROGRESS"
    assert "Cannot start new deployment" in conflict["message"]
    accepted = next(r for r in responses if r.status_code == 202).json()["deploymentId"]
    with requests.Session() as session:
        status = {}
        for _ in range(300):
            status = session.get(
                f"{live_url}/deploy-status", params={"id": accepted}, headers=tenant.headers
            ).json()
            if status["status"] == "completed":
                break
            time.sleep(0.1)
    assert status["status"] == "completed", status


#: Longer than any test below may take: a deployment that finishes had its slot handed over, it did
#: not ask again.
SLOT_POLL_S = 30


@pytest.fixture
def one_slot(worker: Any) -> Iterator[tuple[Runtime, Any]]:
    """The worker and an app with a single sandbox slot, whose waiters ask again only every 30 s."""
    with service_on({"MAX_CONCURRENT_DEPLOYMENTS": "1", "SLOT_WAIT_INTERVAL": str(SLOT_POLL_S)}) as (
        runtime,
        client,
    ):
        _wait_until_no_slot_is_taken(runtime)
        yield runtime, client


def _wait_until_no_slot_is_taken(runtime: Runtime) -> None:
    """Deployments of earlier tests may still be finishing; the line must start empty."""
    deadline = time.monotonic() + 60
    while True:
        with runtime.sessions() as session:
            busy = session.scalar(
                select(func.count())
                .select_from(Deployment)
                .where(
                    Deployment.slot_requested_at.is_not(None),
                    Deployment.slot_released_at.is_(None),
                    Deployment.status == DeploymentStatus.IN_PROGRESS,
                )
            )
        if not busy:
            return
        assert time.monotonic() < deadline, (
            f"{busy} deployments of earlier tests still hold or wait for a slot"
        )
        time.sleep(0.2)


def _slots(runtime: Runtime, ids: list[str]) -> dict[str, Deployment]:
    with runtime.sessions() as session:
        rows = session.scalars(select(Deployment).where(Deployment.id.in_(ids))).all()
        session.expunge_all()
    return {row.id: row for row in rows}


def _waiting_for_a_slot(client: Any, tenant: Any, deployment_id: str) -> None:
    """Wait until the deployment asked for a slot and was refused (its next ask is 30 s away)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
        if "Waiting for a free sandbox slot" in body["logs"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{deployment_id} never waited for a slot: {body}")


def test_a_freed_slot_is_handed_to_the_next_in_line_at_once(one_slot):
    runtime, client = one_slot
    tenant = make_tenant(runtime)
    first = deploy(client, tenant, sleeping_build(3, f"holder-{uuid.uuid4().hex}"))
    wait_for_step(client, tenant, first, "sandbox", "completed")
    second = deploy(client, tenant, {"index.html": "next"}, project_id=new_project(runtime, tenant))
    _waiting_for_a_slot(client, tenant, second)

    assert wait_for(client, tenant, first)["status"] == "completed"
    assert wait_for(client, tenant, second, timeout=SLOT_POLL_S / 2)["status"] == "completed"

    rows = _slots(runtime, [first, second])
    handed_over = rows[second].slot_acquired_at - rows[first].slot_released_at
    assert handed_over.total_seconds() < 5, handed_over
    assert rows[first].sandbox_destroyed_at <= rows[second].sandbox_created_at


def test_the_line_for_a_slot_moves_in_order_one_at_a_time_past_a_cancelled_waiter(one_slot):
    runtime, client = one_slot
    tenant = make_tenant(runtime)
    # Its build lasts long enough for the four others to line up behind it, on a loaded machine too.
    holder = deploy(client, tenant, sleeping_build(6, f"holder-{uuid.uuid4().hex}"))
    wait_for_step(client, tenant, holder, "sandbox", "completed")
    line = []
    for i in range(4):
        files = {"index.html": f"waiter {i}"}
        line.append(deploy(client, tenant, files, project_id=new_project(runtime, tenant)))
        _waiting_for_a_slot(client, tenant, line[-1])
    cancelled = line.pop(1)
    response = client.post(f"/deployments/{cancelled}/cancel", headers=tenant.headers)
    assert response.status_code == 202, response.get_json()

    for deployment_id in [holder, *line]:
        assert wait_for(client, tenant, deployment_id, timeout=SLOT_POLL_S / 2)["status"] == "completed"
    assert wait_for(client, tenant, cancelled)["status"] == "cancelled"

    rows = _slots(runtime, [holder, *line, cancelled])
    assert rows[cancelled].slot_acquired_at is None
    served = sorted([holder, *line], key=lambda d: rows[d].slot_acquired_at)
    assert served == [holder, *line]
    for before, after in itertools.pairwise(served):
        # One slot: each sandbox is created after the one before it was destroyed.
        assert rows[before].sandbox_destroyed_at <= rows[after].sandbox_created_at
        assert (rows[after].slot_acquired_at - rows[before].slot_released_at).total_seconds() < 5


def test_a_newcomer_does_not_take_a_freed_slot_from_the_deployment_first_in_line(one_slot):
    """A slot given back belongs to the first in line, even before it asks again: a deployment that
    reaches its sandbox step in the meantime finds no slot free and lines up behind it."""
    runtime, _client = one_slot
    tenant = make_tenant(runtime)
    holder, waiter, newcomer = (
        queued_deployment(runtime, tenant, new_project(runtime, tenant)) for _ in range(3)
    )

    def run(deployment_id: str, *steps: str) -> list[Any]:
        return [run_step(runtime, step, deployment_id, f"{step}-{uuid.uuid4().hex}") for step in steps]

    for deployment_id in (holder, waiter, newcomer):
        run(deployment_id, "validate", "sync")
    assert run(holder, "sandbox")[0].outcome is Outcome.RAN
    assert run(waiter, "sandbox")[0].outcome is Outcome.WAITING
    *_, cleanup = run(holder, "build", "deploy", "cleanup")
    assert cleanup.woken == (waiter,)

    assert run(newcomer, "sandbox")[0].outcome is Outcome.WAITING
    assert run(waiter, "sandbox")[0].outcome is Outcome.RAN
    assert [r.outcome for r in run(waiter, "build", "deploy", "cleanup")] == [Outcome.RAN] * 3
    assert [r.outcome for r in run(newcomer, "sandbox", "build", "deploy", "cleanup")] == [Outcome.RAN] * 4
    rows = _slots(runtime, [holder, waiter, newcomer])
    served = sorted(rows.values(), key=lambda row: row.slot_acquired_at)
    assert [row.id for row in served] == [holder, waiter, newcomer]


def test_deployments_asking_for_the_last_slot_at_once_get_it_one_at_a_time(one_slot):
    """The slot count runs after the lock that serialises grants: of six deployments asking for
    the one slot at the same moment, one gets it and five line up."""
    runtime, _client = one_slot
    tenant = make_tenant(runtime)
    ids = [queued_deployment(runtime, tenant, new_project(runtime, tenant)) for _ in range(6)]
    for deployment_id in ids:
        for step in ("validate", "sync"):
            run_step(runtime, step, deployment_id, f"{step}-{deployment_id}")
    start = Barrier(len(ids))

    def ask(deployment_id: str) -> Any:
        start.wait()
        return run_step(runtime, "sandbox", deployment_id, f"sandbox-{deployment_id}").outcome

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        outcomes = dict(zip(ids, pool.map(ask, ids), strict=True))

    assert sorted(outcomes.values()) == sorted([Outcome.RAN] + [Outcome.WAITING] * 5), outcomes
    holder = next(d for d, outcome in outcomes.items() if outcome is Outcome.RAN)
    # Each in turn, in the order they lined up, so that the slot is free for the tests after this one.
    rows = _slots(runtime, ids)
    line = sorted((d for d in ids if d != holder), key=lambda d: rows[d].slot_requested_at)
    for deployment_id, steps in [(holder, ("build", "deploy", "cleanup"))] + [
        (d, ("sandbox", "build", "deploy", "cleanup")) for d in line
    ]:
        for step in steps:
            assert run_step(runtime, step, deployment_id, f"{step}-{deployment_id}-2").outcome is Outcome.RAN


def _reaped(runtime: Runtime, deployment_id: str, **state: Any) -> tuple[str, str] | None:
    """Where and why the reaper would publish the deployment again, were its row as ``state`` says;
    rolled back, so the row stays as it is."""
    with runtime.sessions() as session:
        try:
            session.execute(update(Deployment).where(Deployment.id == deployment_id).values(**state))
            claimed = claim_stalled(session, runtime.settings, utcnow())
            return next(
                ((d.start, d.reason) for d in claimed.dispatches if d.deployment_id == deployment_id), None
            )
        finally:
            session.rollback()


def test_a_replay_waiting_for_a_slot_is_in_the_line_and_the_reaper_leaves_it_there(one_slot):
    """A deployment replayed at its sandbox step asks for a slot before any of its steps began, so
    it waits as queued: it is in the line all the same (woken by the hand-over, served before a
    later arrival), and the reaper takes it for picked up while it keeps asking."""
    runtime, _client = one_slot
    tenant = make_tenant(runtime)
    faulty = new_project(runtime, tenant)
    use_sandbox_provider(runtime, faulty, "faulty")
    replayed, holder, newcomer = (
        queued_deployment(runtime, tenant, project_id)
        for project_id in (faulty, new_project(runtime, tenant), new_project(runtime, tenant))
    )

    def run(deployment_id: str, *steps: str) -> list[Any]:
        return [run_step(runtime, step, deployment_id, f"{step}-{uuid.uuid4().hex}") for step in steps]

    # Dead-lettered at its sandbox step (the provider answered 503 three times), then cleaned up.
    run(replayed, "validate", "sync")
    FaultySandbox.fail(faulty)
    try:
        for _ in range(3):
            with pytest.raises(ProviderError) as failed:
                run(replayed, "sandbox")
            verdict = fail_attempt(runtime, "sandbox", replayed, failed.value)
    finally:
        FaultySandbox.heal(faulty)
    assert verdict.dead_letter is not None
    run(replayed, "cleanup")

    run(holder, "validate", "sync", "sandbox")
    with transaction(runtime.sessions) as session:
        letter = dead_letters.get(session, verdict.dead_letter.id)
        plan = dead_letters.prepare_replay(session, runtime.settings, letter, from_start=False)
    assert plan.start == "sandbox"
    assert run(replayed, "sandbox")[0].outcome is Outcome.WAITING
    run(newcomer, "validate", "sync")
    assert run(newcomer, "sandbox")[0].outcome is Outcome.WAITING
    assert _slots(runtime, [replayed])[replayed].status == DeploymentStatus.QUEUED

    # Its message went out long ago, and it keeps asking: picked up, left alone.
    settings = runtime.settings
    long_ago = utcnow() - timedelta(seconds=2 * max(settings.pickup_timeout_s, settings.heartbeat_timeout_s))
    assert _reaped(runtime, replayed, enqueued_at=long_ago) is None
    # Its asks stopped (the retry that carries them was lost): resumed where it waits.
    stopped = _reaped(runtime, replayed, enqueued_at=long_ago, heartbeat_at=long_ago)
    assert stopped == ("sandbox", "heartbeat stopped")

    # The slot given back is handed to it, not to the deployment that asked after it.
    *_, cleanup = run(holder, "build", "deploy", "cleanup")
    assert cleanup.woken == (replayed,)
    assert run(newcomer, "sandbox")[0].outcome is Outcome.WAITING
    assert [r.outcome for r in run(replayed, "sandbox", "build", "deploy", "cleanup")] == [Outcome.RAN] * 4
    assert [r.outcome for r in run(newcomer, "sandbox", "build", "deploy", "cleanup")] == [Outcome.RAN] * 4
    rows = _slots(runtime, [holder, replayed, newcomer])
    served = sorted(rows.values(), key=lambda row: row.slot_acquired_at)
    assert [row.id for row in served] == [holder, replayed, newcomer]
