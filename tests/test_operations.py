"""Operations: /metrics for Prometheus, JSON logs with request ids."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from libra_deploy.logging_config import configure_logging
from tests.helpers import deploy_completed


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.stack
def test_metrics_count_deployments_steps_and_queues(client, tenant, worker):
    deploy_completed(client, tenant, {"index.html": "<h1>measured</h1>"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = _samples(response.get_data(as_text=True))

    assert samples[("libra_deployments", (("status", "completed"),))] >= 1
    assert ("libra_deployments", (("status", "failed"),)) in samples
    count = samples[("libra_deployment_step_duration_seconds_count", (("step", "build"),))]
    assert count >= 1
    assert (
        samples[("libra_deployment_step_duration_seconds_bucket", (("le", "+Inf"), ("step", "build")))]
        == count
    )
    assert samples[("libra_deployment_step_duration_seconds_sum", (("step", "build"),))] > 0
    assert ("libra_deployment_step_retries_total", (("step", "sandbox"),)) in samples
    assert ("libra_dead_letters", (("state", "pending"),)) in samples
    for queue in ("deployment-queue", "deployment-dlq", "deployment-webhooks"):
        assert samples[("libra_queue_messages", (("queue", queue),))] >= 0
    assert ("libra_webhook_deliveries", (("status", "delivered"),)) in samples


def test_metrics_need_the_token_when_one_is_set(runtime):
    from web import create_app

    guarded = dataclasses.replace(
        runtime, settings=dataclasses.replace(runtime.settings, metrics_token="s3cret")
    )
    client = create_app(guarded).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    configure_logging(runtime.settings)


def test_every_request_gets_a_request_id_echoed_and_logged_as_json(client, settings, tenant):
    stream = io.StringIO()
    configure_logging(settings, stream)
    try:
        given = client.get("/health", headers={"X-Request-ID": "req-abc.123"})
        generated = client.get(f"/projects/{tenant.project_id}", headers=tenant.headers)
        refused = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    finally:
        configure_logging(settings)
    assert given.headers["X-Request-ID"] == "req-abc.123"
    assert len(generated.headers["X-Request-ID"]) == 32
    assert refused.headers["X-Request-ID"] != "bad id with spaces"

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = {line["request_id"]: line for line in lines if line["logger"] == "web.requests"}
    assert requests["req-abc.123"]["path"] == "/health"
    assert requests[generated.headers["X-Request-ID"]]["status"] == 200
    assert all(
        {"timestamp", "level", "message", "request_id", "deployment_id"} <= set(line) for line in lines
    )
