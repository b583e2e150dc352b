"""Concurrent POSTs for one project: exactly one is accepted, the database decides."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
import requests

from tests.helpers import make_tenant, text_files

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
