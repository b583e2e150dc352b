"""`celery -A tasks flower` against a broker of the test's own: its API shows the worker and the queue."""

from __future__ import annotations

import pytest
import requests

from tests.service import BIN, free_port, running_service, wait_until

pytestmark = pytest.mark.slow

AUTH = ("ops", "flower-test")


def test_flower_shows_the_worker_and_the_deployment_queue():
    with running_service() as service:
        service.start_worker("watched")
        port = free_port()
        service._spawn(
            "flower",
            [
                str(BIN / "celery"),
                "-A",
                "tasks",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                f"--basic-auth={AUTH[0]}:{AUTH[1]}",
            ],
        )
        base = f"http://127.0.0.1:{port}"

        def get(path: str) -> requests.Response | None:
            try:
                return requests.get(base + path, auth=AUTH, timeout=10)
            except requests.RequestException:
                return None

        wait_until(lambda: (r := get("/healthcheck")) is not None and r.status_code == 200, 60, "flower")
        # The API needs the password.
        assert requests.get(f"{base}/api/workers", timeout=10).status_code == 401

        workers = wait_until(
            lambda: (r := get("/api/workers?refresh=1")) is not None and r.status_code == 200 and r.json(),
            60,
            "the worker to show in flower",
            interval=1,
        )
        (name,) = [n for n in workers if n.startswith("watched@")]
        consumed = {queue["name"] for queue in workers[name]["active_queues"]}
        assert {"deployment-queue", "deployment-webhooks"} <= consumed
        assert "deployment-dlq" not in consumed

        lengths = get("/api/queues/length")
        assert lengths is not None
        assert lengths.status_code == 200
        queues = {q["name"]: q["messages"] for q in lengths.json()["active_queues"]}
        assert queues.get("deployment-queue") == 0
