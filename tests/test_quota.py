"""Deploy quotas: reserved at POST, consumed on completion, released on failure, never twice."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from threading import Barrier

import pytest
import requests
from sqlalchemy import select

from libra_deploy import quota
from libra_deploy.accounts import get_organization
from libra_deploy.db import transaction
from libra_deploy.errors import StepError, TooManyRequests
from libra_deploy.models import Deployment, DeploymentStep, QuotaLedger
from libra_deploy.steps import STEPS
from libra_deploy.steps.runner import Outcome, fail_attempt, run_step
from tests.helpers import deploy, make_tenant, new_project, queued_deployment, text_files, wait_for


def _ledger(runtime, deployment_ids) -> Counter[str]:
    with runtime.sessions() as session:
        kinds = session.scalars(
            select(QuotaLedger.kind).where(QuotaLedger.deployment_id.in_(list(deployment_ids)))
        )
        return Counter(kinds)


def _set_limit(runtime, org_id: str, limit: int | None) -> None:
    with transaction(runtime.sessions) as session:
        quota.set_limit(session, org_id, limit)


def test_period_bounds_are_calendar_months_in_utc():
    assert quota.period_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"
    assert quota.period_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert quota.period_bounds("2026-02")[1] == datetime(2026, 3, 1, tzinfo=UTC)


def test_quota_endpoint_shows_limit_used_reserved_and_period(client, runtime, settings):
    tenant = make_tenant(runtime)
    fresh = client.get(f"/orgs/{tenant.org_id}/quota", headers=tenant.headers).get_json()
    assert fresh["limit"] == settings.default_deploy_quota == 1000
    assert (fresh["used"], fresh["reserved"], fresh["remaining"]) == (0, 0, 1000)
    assert fresh["period"] == quota.period_of(datetime.now(UTC))
    assert fresh["periodStart"].startswith(fresh["period"] + "-01T00:00:00")

    queued_deployment(runtime, tenant)
    _set_limit(runtime, tenant.org_id, 5)
    body = client.get(f"/orgs/{tenant.org_id}/quota", headers=tenant.headers).get_json()
    assert (body["limit"], body["used"], body["reserved"], body["remaining"]) == (5, 0, 1, 4)

    _set_limit(runtime, tenant.org_id, None)
    assert client.get(f"/orgs/{tenant.org_id}/quota", headers=tenant.headers).get_json()["limit"] == 1000


def test_no_quota_left_is_429_and_nothing_is_recorded(client, runtime):
    tenant = make_tenant(runtime)
    _set_limit(runtime, tenant.org_id, 0)
    body = {"projectId": tenant.project_id, "initFiles": text_files({"index.html": "no quota"})}
    response = client.post("/deploy", json=body, headers=tenant.headers)
    assert response.status_code == 429
    error = response.get_json()
    assert error["error"] == "DEPLOYMENT_QUOTA_EXCEEDED"
    assert error["details"]["limit"] == 0
    reset = datetime.fromisoformat(error["details"]["resetAt"].replace("Z", "+00:00"))
    assert 0 < int(response.headers["Retry-After"]) <= (reset - datetime.now(UTC)).total_seconds() + 1
    with runtime.sessions() as session:
        assert (
            session.scalars(select(Deployment).where(Deployment.project_id == tenant.project_id)).all() == []
        )
    project = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers).get_json()
    assert project["deploymentStatus"] == "idle"


def test_settling_twice_never_charges_or_refunds_twice(runtime):
    tenant = make_tenant(runtime)
    completed, failed = (
        queued_deployment(runtime, tenant),
        queued_deployment(runtime, tenant, new_project(runtime, tenant)),
    )
    with transaction(runtime.sessions) as session:
        assert quota.consume(session, completed) is True
        assert quota.consume(session, completed) is False
        # A completed deployment's unit is not given back by a late failure or cancel.
        assert quota.release(session, completed) is False
        assert quota.release(session, failed) is True
        assert quota.release(session, failed) is False
        assert quota.consume(session, "dep_without_reservation") is False
        assert quota.release(session, "dep_without_reservation") is False
    assert _ledger(runtime, [completed]) == Counter({"reserve": 1, "consume": 1})
    assert _ledger(runtime, [failed]) == Counter({"reserve": 1, "release": 1})
    with runtime.sessions() as session:
        usage = quota.usage(session, runtime.settings, get_organization(session, tenant.org_id))
    assert (usage.used, usage.reserved) == (1, 0)


def test_a_replay_takes_its_unit_back_and_is_refused_when_none_is_left(runtime):
    tenant = make_tenant(runtime)
    deployment_id = queued_deployment(runtime, tenant)
    with transaction(runtime.sessions) as session:
        quota.release(session, deployment_id)  # it failed
        deployment = session.get(Deployment, deployment_id)
        quota.readmit(session, runtime.settings, deployment)  # replayed
        quota.consume(session, deployment_id)  # and completed
        usage = quota.usage(session, runtime.settings, get_organization(session, tenant.org_id))
    assert (usage.used, usage.reserved, usage.remaining) == (1, 0, usage.limit - 1)
    assert _ledger(runtime, [deployment_id]) == Counter({"reserve": 1, "consume": 1})

    failed = queued_deployment(runtime, tenant, new_project(runtime, tenant))
    with transaction(runtime.sessions) as session:
        quota.release(session, failed)
        get_organization(session, tenant.org_id).deploy_quota = 1  # the one unit is used already
    with pytest.raises(TooManyRequests) as raised, transaction(runtime.sessions) as session:
        quota.readmit(session, runtime.settings, session.get(Deployment, failed))
    assert raised.value.code == "DEPLOYMENT_QUOTA_EXCEEDED"
    assert _ledger(runtime, [failed]) == Counter({"reserve": 1, "release": 1})


def test_redelivered_steps_and_repeated_failures_settle_once(client, runtime, worker):
    tenant = make_tenant(runtime)
    done = deploy(client, tenant, {"index.html": "once"})
    assert wait_for(client, tenant, done)["status"] == "completed"
    # A redelivered cleanup (the same task id) finds its step completed and does nothing.
    with runtime.sessions() as session:
        task_id = session.scalars(
            select(DeploymentStep.task_id).filter_by(deployment_id=done, step="cleanup")
        ).one()
    assert run_step(runtime, "cleanup", done, task_id).outcome is Outcome.ALREADY_DONE
    assert _ledger(runtime, [done]) == Counter({"reserve": 1, "consume": 1})

    failing = queued_deployment(runtime, tenant, new_project(runtime, tenant))
    error = StepError("the provider is gone", code="PROVIDER_ERROR")
    for _ in range(3):
        fail_attempt(runtime, "sandbox", failing, error)
    assert _ledger(runtime, [failing]) == Counter({"reserve": 1, "release": 1})


def test_validate_refuses_a_deployment_without_a_reservation(runtime):
    tenant = make_tenant(runtime)
    with transaction(runtime.sessions) as session:
        deployment = Deployment(project_id=tenant.project_id, org_id=tenant.org_id, user_id=tenant.user_id)
        deployment.steps = [DeploymentStep(step=name, position=i) for i, name in enumerate(STEPS)]
        session.add(deployment)
        session.flush()
        deployment_id = deployment.id
    with pytest.raises(StepError) as raised:
        run_step(runtime, "validate", deployment_id)
    assert raised.value.code == "QUOTA_NOT_RESERVED"


# Fifty at once ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_url(app):
    from web.server import Server

    server = Server(app, "127.0.0.1", 0)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


PARALLEL = 50
QUOTA_LEFT = 10
#: A build that waits for the test to open its gate, then fails: a failed deployment gives its unit
#: back, and one failing before every POST was answered would let an eleventh one in.
GATED_FAILURE = {
    "package.json": json.dumps({"scripts": {"build": "node gate.js"}}),
    "gate.js": """
const fs = require('fs');
const deadline = Date.now() + 200000;
(function wait() {
  if (fs.existsSync('gate-open') || Date.now() > deadline) {
    console.error('failing on purpose');
    process.exit(1);
  }
  setTimeout(wait, 50);
})();
""",
}


@pytest.mark.stack
@pytest.mark.slow
def test_fifty_parallel_posts_with_ten_units_left_accept_exactly_ten(live_url, runtime, worker, settings):
    tenant = make_tenant(runtime)
    projects = [tenant.project_id] + [new_project(runtime, tenant) for _ in range(PARALLEL - 1)]
    _set_limit(runtime, tenant.org_id, QUOTA_LEFT)
    start = Barrier(PARALLEL)

    def post(index: int) -> requests.Response:
        # Every other deployment's build fails (and must give its unit back); the others consume it.
        files = GATED_FAILURE if index % 2 else {"index.html": f"site {index}"}
        body = {"projectId": projects[index], "initFiles": text_files(files)}
        with requests.Session() as session:
            start.wait()
            return session.post(f"{live_url}/deploy", json=body, headers=tenant.headers, timeout=120)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        responses = list(pool.map(post, range(PARALLEL)))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {202: QUOTA_LEFT, 429: PARALLEL - QUOTA_LEFT}, [
        r.text for r in responses if r.status_code >= 500
    ]
    assert {r.json()["error"] for r in responses if r.status_code == 429} == {"DEPLOYMENT_QUOTA_EXCEEDED"}
    accepted = [r.json()["deploymentId"] for r in responses if r.status_code == 202]

    finished: dict[str, str] = {}
    deadline = time.monotonic() + 240
    with requests.Session() as session:
        while len(finished) < len(accepted) and time.monotonic() < deadline:
            for deployment_id in set(accepted) - set(finished):
                # Every answer is in: open the gate of each gated build whose sandbox exists by now.
                project_dir = settings.data_dir / "sandboxes" / f"lsb_{deployment_id}" / "project"
                if (project_dir / "gate.js").exists():
                    (project_dir / "gate-open").touch()
                body = session.get(
                    f"{live_url}/deploy-status",
                    params={"id": deployment_id},
                    headers=tenant.headers,
                    timeout=30,
                ).json()
                if (
                    body["status"] in ("completed", "failed")
                    and body["steps"]["cleanup"]["status"] == "completed"
                ):
                    finished[deployment_id] = body["status"]
            time.sleep(0.2)
    assert len(finished) == QUOTA_LEFT, finished
    outcomes = Counter(finished.values())
    assert outcomes["completed"], outcomes
    assert outcomes["failed"], outcomes

    # The ledger balances: every reservation was either consumed or released, once.
    ledger = _ledger(runtime, accepted)
    assert ledger == Counter(
        {"reserve": QUOTA_LEFT, "consume": outcomes["completed"], "release": outcomes["failed"]}
    )
    with requests.Session() as session:
        usage = session.get(
            f"{live_url}/orgs/{tenant.org_id}/quota", headers=tenant.headers, timeout=30
        ).json()
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (
        outcomes["completed"],
        0,
        QUOTA_LEFT - outcomes["completed"],
    )
