"""Live logs on the production topology: gunicorn (gthread), a Celery worker process, the database.

Several streams stay open while the web process keeps answering other requests, each stream reads
the same lines from the database, one resumes after its Last-Event-ID, and the processes' logs are
JSON lines carrying the request id (web) and the deployment id (worker).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.helpers import make_tenant, parse_sse, slow_printing_build, text_files
from tests.service import running_service

pytestmark = pytest.mark.slow

STREAMS = 5


def _stream(url: str, headers: dict[str, str], into: list, opened: threading.Event | None = None) -> None:
    with requests.get(url, headers=headers, stream=True, timeout=60) as response:
        assert response.status_code == 200
        if opened is not None:
            opened.set()
        for event in parse_sse(response.iter_content(chunk_size=None)):
            into.append(event)


def test_open_streams_do_not_starve_other_requests_and_resume_exactly():
    with running_service(LOG_LEVEL="INFO", SSE_KEEPALIVE_INTERVAL="0.5", SSE_POLL_INTERVAL="0.2") as service:
        tenant = make_tenant(service.runtime)
        service.start_web()  # one gunicorn worker with 8 threads
        service.start_worker("worker")
        body = {
            "projectId": tenant.project_id,
            "initFiles": text_files(slow_printing_build(12, 0.5)),
        }
        accepted = requests.post(f"{service.url}/deploy", json=body, headers=tenant.headers, timeout=30)
        assert accepted.status_code == 202, accepted.text
        deployment_id = accepted.json()["deploymentId"]
        url = f"{service.url}/deployments/{deployment_id}/logs?follow=1"
        headers = {**tenant.headers, "Accept": "text/event-stream"}

        received: list[list] = [[] for _ in range(STREAMS)]
        opened = [threading.Event() for _ in range(STREAMS)]
        threads = [
            threading.Thread(target=_stream, args=(url, headers, received[i], opened[i]), daemon=True)
            for i in range(STREAMS)
        ]
        for thread in threads:
            thread.start()
        for event in opened:
            assert event.wait(30), "a stream did not open"

        # While five streams are open, the same process answers everything else at once.
        answered = 0
        while any(t.is_alive() for t in threads) and answered < 40:
            response = requests.get(
                f"{service.url}/deploy-status",
                params={"id": deployment_id},
                headers={**tenant.headers, "X-Request-ID": f"probe-{answered}"},
                timeout=5,
            )
            assert response.status_code == 200
            assert response.headers["X-Request-ID"] == f"probe-{answered}"
            answered += 1
            time.sleep(0.05)
        assert answered == 40, "the streams ended before the other requests were made"
        for thread in threads:
            thread.join(90)
            assert not thread.is_alive(), "a stream did not end with the deployment"

        log_ids = [[int(e.id) for e in events if e is not None and e.event == "log"] for events in received]
        assert all(ids == log_ids[0] for ids in log_ids), "the streams saw different lines"
        assert log_ids[0] == sorted(set(log_ids[0]))
        ticks = [
            e.data["message"]
            for e in received[0]
            if e is not None and e.event == "log" and "tick" in e.data["message"]
        ]
        assert ticks == [f"tick {i}" for i in range(1, 13)]
        assert all(
            events[-1].event == "end" and events[-1].data["status"] == "completed" for events in received
        )
        assert any(e is None for events in received for e in events), "no keep-alive comment was sent"

        # A reconnecting client resumes right after the last line it saw.
        resumed: list = []
        _stream(url, {**headers, "Last-Event-ID": str(log_ids[0][6])}, resumed)
        assert [int(e.id) for e in resumed if e is not None and e.event == "log"] == log_ids[0][7:]

        web_lines = [json.loads(line) for line in service.log("web").splitlines() if line.startswith("{")]
        probes = [line for line in web_lines if str(line.get("request_id", "")).startswith("probe-")]
        assert len(probes) == 40
        assert all(line["status"] == 200 for line in probes)
        worker_lines = [
            json.loads(line) for line in service.log("worker").splitlines() if line.startswith("{")
        ]
        assert any(line.get("deployment_id") == deployment_id for line in worker_lines), service.log(
            "worker"
        )[-2000:]
