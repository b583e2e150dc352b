"""Faults injected into the real topology: workers killed, the broker wiped or down, bursts, deadlines.

Each test runs the service as production does (gunicorn, Celery worker processes, celery beat)
against a redis-server of its own, so that killing and wiping things touches no other test.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from sqlalchemy import select

from libra_deploy.db import transaction
from libra_deploy.models import DeadLetter, Deployment, QuotaLedger
from tests.helpers import Tenant, build_processes, make_tenant, new_project, sleeping_build, text_files
from tests.service import Service, running_service, wait_until

pytestmark = pytest.mark.slow

SITE = {"index.html": "<h1>survivor</h1>"}


def post(service: Service, tenant: Tenant, files: dict[str, str], project_id: str | None = None) -> str:
    body = {
        "projectId": project_id or tenant.project_id,
        "initFiles": text_files(files),
        "replaceFiles": True,
    }
    response = requests.post(f"{service.url}/deploy", json=body, headers=tenant.headers, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["deploymentId"]


def status(service: Service, tenant: Tenant, deployment_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{service.url}/deploy-status", params={"id": deployment_id}, headers=tenant.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_finished(
    service: Service, tenant: Tenant, deployment_id: str, timeout: float = 90
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = status(service, tenant, deployment_id)
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return wait_until(finished, timeout, f"deployment {deployment_id} to finish", interval=0.2)


def builds_started(service: Service, tenant: Tenant, deployment_id: str, count: int = 1) -> None:
    """Wait until the deployment's build has started ``count`` times."""
    wait_until(
        lambda: status(service, tenant, deployment_id)["logs"].count("build started") >= count,
        60,
        f"build {count} of {deployment_id} to start",
        interval=0.2,
    )


def test_a_worker_killed_mid_build_is_replaced_and_the_deployment_completes_once():
    with running_service() as service:
        tenant = make_tenant(service.runtime)
        service.start_web()
        service.start_beat()
        service.start_worker("first")
        marker = f"orphan-{uuid.uuid4().hex}"
        deployment_id = post(service, tenant, sleeping_build(3, marker))
        builds_started(service, tenant, deployment_id)

        service.kill("first")
        service.start_worker("second")
        body = wait_finished(service, tenant, deployment_id)

        assert body["status"] == "completed", body
        assert body["steps"]["build"]["attempts"] == 2
        assert body["logs"].count("build started") == 2
        assert body["steps"]["deploy"]["attempts"] == 1
        published = [
            line for line in body["logs"] if line.startswith("Published 1 files to the local target")
        ]
        assert len(published) == 1, body["logs"]  # published once
        assert body["steps"]["cleanup"]["attempts"] == 1
        with service.runtime.sessions() as session:
            ledger = session.scalars(
                select(QuotaLedger.kind).where(QuotaLedger.deployment_id == deployment_id)
            ).all()
        assert sorted(ledger) == ["consume", "reserve"]  # charged once, across the two workers
        assert not build_processes(marker), "the dead worker's build was left running"
        site = requests.get(body["url"], timeout=30)
        assert site.text == "built after 3 s"


def test_redis_restarted_empty_loses_nothing():
    with running_service() as service:
        tenant = make_tenant(service.runtime)
        projects = [tenant.project_id] + [new_project(service.runtime, tenant) for _ in range(3)]
        service.start_web()
        service.start_beat()
        queued = [post(service, tenant, SITE, project) for project in projects]  # no worker yet

        service.redis.restart_empty()
        service.start_worker("after-restart")

        for deployment_id in queued:
            assert wait_finished(service, tenant, deployment_id)["status"] == "completed"


def test_the_broker_down_at_post_time_still_gives_202_and_the_deployment_completes():
    with running_service() as service:
        tenant = make_tenant(service.runtime)
        service.start_web()
        service.start_beat()
        service.start_worker("worker")
        service.redis.stop()

        deployment_id = post(service, tenant, SITE)
        assert status(service, tenant, deployment_id)["status"] == "queued"
        with service.runtime.sessions() as session:
            assert session.get(Deployment, deployment_id).enqueued_at is None  # left to the relay

        service.redis.start()  # same port, empty
        assert wait_finished(service, tenant, deployment_id)["status"] == "completed"


def test_a_burst_of_thirty_never_holds_more_sandboxes_than_the_cap():
    cap = 5
    with running_service(MAX_CONCURRENT_DEPLOYMENTS=str(cap)) as service:
        tenants = [make_tenant(service.runtime), make_tenant(service.runtime)]
        projects = [(t, t.project_id) for t in tenants]
        projects += [(tenants[i % 2], new_project(service.runtime, tenants[i % 2])) for i in range(28)]
        service.start_web()
        service.start_beat()
        service.start_worker("one")
        service.start_worker("two")  # 10 task slots for a cap of 5 sandboxes

        started = [(t, post(service, t, sleeping_build(1, "burst"), p)) for t, p in projects]

        for tenant, deployment_id in started:
            assert wait_finished(service, tenant, deployment_id, timeout=240)["status"] == "completed"
        with service.runtime.sessions() as session:
            lifetimes = [
                (d.sandbox_created_at, d.sandbox_destroyed_at)
                for d in session.query(Deployment).filter(Deployment.id.in_([d for _, d in started]))
            ]
    assert all(created and destroyed and created <= destroyed for created, destroyed in lifetimes)
    events = sorted(
        [(c, 1) for c, _ in lifetimes] + [(d, -1) for _, d in lifetimes], key=lambda e: (e[0], e[1])
    )
    overlap = peak = 0
    for _, change in events:
        overlap += change
        peak = max(peak, overlap)
    assert 1 < peak <= cap


def test_a_deployment_past_its_deadline_fails_with_deployment_timeout_and_its_build_is_stopped():
    with running_service(MAX_DEPLOYMENT_TIMEOUT="4000") as service:
        tenant = make_tenant(service.runtime)
        service.start_web()
        service.start_beat()
        service.start_worker("worker")
        marker = f"deadline-{uuid.uuid4().hex}"
        deployment_id = post(service, tenant, sleeping_build(60, marker))
        builds_started(service, tenant, deployment_id)
        sandboxes = service.runtime.settings.data_dir / "sandboxes"
        assert list(sandboxes.glob(f"*{deployment_id}*"))  # so that "gone" below means something

        body = wait_finished(service, tenant, deployment_id)

        assert body["status"] == "failed"
        assert body["errorCode"] == "DEPLOYMENT_TIMEOUT"
        assert body["steps"]["build"]["status"] == "failed"
        wait_until(lambda: not build_processes(marker), 5, "the build to stop")
        # Cleanup still ran after the timeout: the sandbox's directory is gone.
        wait_until(
            lambda: status(service, tenant, deployment_id)["steps"]["cleanup"]["status"] == "completed",
            30,
            "cleanup to complete",
        )
        assert not list(sandboxes.glob(f"*{deployment_id}*"))


def test_a_step_whose_worker_dies_on_every_attempt_is_dead_lettered():
    with running_service() as service:
        tenant = make_tenant(service.runtime)
        service.start_web()
        service.start_beat()
        deployment_id = post(service, tenant, sleeping_build(30, "doomed"))
        for attempt in range(3):
            service.start_worker(f"doomed-{attempt}")
            builds_started(service, tenant, deployment_id, count=attempt + 1)
            service.kill(f"doomed-{attempt}")
        service.start_worker("survivor")  # runs the cleanup once the reaper gives up

        body = wait_finished(service, tenant, deployment_id)

        assert body["status"] == "failed"
        assert body["errorCode"] == "WORKER_LOST"
        assert body["steps"]["build"]["attempts"] == 3
        wait_until(
            lambda: status(service, tenant, deployment_id)["steps"]["cleanup"]["status"] == "completed",
            60,
            "the cleanup after the dead letter",
        )
        with transaction(service.runtime.sessions) as session:
            (letter,) = session.query(DeadLetter).filter_by(deployment_id=deployment_id).all()
            assert letter.step == "build"
            assert letter.message["error"]["code"] == "WORKER_LOST"
            assert letter.published_at is not None
