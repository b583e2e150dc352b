"""The API reference: a valid, complete OpenAPI document, a client generated from it that deploys,
and /docs rendered offline in headless Chromium."""

from __future__ import annotations

import html
import importlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from tests.service import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
PUBLIC = {"/", "/health", "/docs", "/docs/scalar.js", "/openapi.json", "/metrics"}


@pytest.fixture
def server(app):
    from web.server import Server

    running = Server(app, "127.0.0.1", free_port())
    running.start()
    yield f"http://127.0.0.1:{running.port}"
    running.stop()


def test_the_openapi_document_validates_and_describes_every_operation(client):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    operation_ids = set()
    for path, item in spec["paths"].items():
        for parameter in item.get("parameters", []):
            assert parameter.get("description"), f"{path}: parameter {parameter['name']} has no description"
        for method, operation in item.items():
            if method == "parameters":
                continue
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), f"{where} has no summary"
            assert operation["operationId"] not in operation_ids, f"{where}: operationId used twice"
            operation_ids.add(operation["operationId"])
            responses = operation["responses"]
            assert all(r.get("description") or "$ref" in r for r in responses.values()), (
                f"{where}: undescribed"
            )
            errors = {code: r for code, r in responses.items() if code.isdigit() and int(code) >= 400}
            if path not in PUBLIC and not path.startswith("/sites"):
                assert "401" in errors, f"{where} does not document 401"
            for code, response in errors.items():
                content = response.get("content", {}).get("application/json")
                if content is not None and path != "/health":
                    assert content["schema"] == {"$ref": "#/components/schemas/Error"}, f"{where} {code}"
                    assert content["example"]["success"] is False, f"{where} {code} has no example"
            for parameter in operation.get("parameters", []):
                assert parameter.get("description") or parameter.get("schema", {}).get("description"), (
                    f"{where}: parameter {parameter['name']} has no description"
                )
    deploy = spec["paths"]["/deploy"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in deploy["parameters"])
    assert "422" in deploy["responses"]
    logs = spec["paths"]["/deployments/{deployment_id}/logs"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in logs


@pytest.mark.slow
def test_a_client_generated_from_the_document_deploys(client, server, tenant, worker, tmp_path):
    (tmp_path / "openapi.json").write_bytes(client.get("/openapi.json").get_data())
    generated = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", "openapi.json", "--output-path", "client"],
        cwd=tmp_path,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout, generated.stdout
    sys.path.insert(0, str(tmp_path / "client"))
    try:
        api = importlib.import_module("libra_deploy_api_client")
        models = importlib.import_module("libra_deploy_api_client.models")
        post_deploy = importlib.import_module("libra_deploy_api_client.api.deploy.post_deploy")
        get_deployment = importlib.import_module(
            "libra_deploy_api_client.api.deployments.get_deployment_by_id"
        )
        listing = importlib.import_module("libra_deploy_api_client.api.history.get_project_deployments")

        with api.AuthenticatedClient(base_url=server, token=tenant.token) as sdk:
            body = models.DeployRequest(
                project_id=tenant.project_id,
                init_files=[models.InitFile(path="index.html", content="<h1>generated</h1>")],
            )
            accepted = post_deploy.sync(client=sdk, body=body, idempotency_key="sdk-1")
            assert accepted.deployment_id.startswith("dep_")
            deadline = time.monotonic() + 60
            detail = get_deployment.sync(client=sdk, deployment_id=accepted.deployment_id)
            while detail.status not in ("completed", "failed") and time.monotonic() < deadline:
                time.sleep(0.2)
                detail = get_deployment.sync(client=sdk, deployment_id=accepted.deployment_id)
            assert detail.status == "completed"
            page = listing.sync(client=sdk, project_id=tenant.project_id)
            assert page.deployments[0].deployment_id == accepted.deployment_id
            missing = get_deployment.sync_detailed(client=sdk, deployment_id="dep_nope")
            assert missing.status_code == 404
    finally:
        sys.path.remove(str(tmp_path / "client"))
        for name in [m for m in sys.modules if m.startswith("libra_deploy_api_client")]:
            del sys.modules[name]
    assert client.get(f"/sites/{tenant.project_id}/").get_data(as_text=True) == "<h1>generated</h1>"


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: bin/setup dev installs it (apt-get install chromium)")
    return found


@pytest.mark.slow
def test_docs_render_offline_in_headless_chromium_and_list_the_endpoints(client, server, tmp_path):
    page = client.get("/docs").get_data(as_text=True)
    assert 'src="docs/scalar.js"' in page, "the Scalar bundle is not installed (bin/setup installs it)"
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            f"{server}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", result.stdout, flags=re.S)
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))
    for summary in (
        "Start a deployment",
        "Get a deployment in detail",
        "Read a deployment's log, or follow it live",
        "Deploy the same source again",
        "List a project's deployments",
        "Add a webhook",
        "List a webhook's deliveries",
        "Metrics for Prometheus",
        "Make an earlier deployment live again",
    ):
        assert summary in text, f"/docs does not list {summary!r}"
