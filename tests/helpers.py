"""Helpers shared by the tests: tenants, deploy requests, waiting for a deployment to end."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra_deploy import accounts, auth
from libra_deploy.auth import Principal
from libra_deploy.db import make_engine, make_sessionmaker, transaction
from libra_deploy.migrate import upgrade
from libra_deploy.runtime import Runtime

FINISHED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Tenant:
    org_id: str
    user_id: str
    token: str
    project_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_tenant(runtime: Runtime, *, projects: int = 1) -> Tenant:
    suffix = uuid.uuid4().hex[:8]
    with transaction(runtime.sessions) as session:
        org = accounts.create_organization(session, f"org-{suffix}")
        user = accounts.create_user(session, org.id, f"user-{suffix}@example.io")
        _row, token = auth.create_token(session, org_id=org.id, user_id=user.id)
        project = accounts.create_project(session, org.id, f"site-{suffix}")
    return Tenant(org.id, user.id, token, project.id)


def new_project(runtime: Runtime, tenant: Tenant, name: str | None = None) -> str:
    with transaction(runtime.sessions) as session:
        return accounts.create_project(session, tenant.org_id, name or f"site-{uuid.uuid4().hex[:8]}").id


@contextmanager
def migrated_sessions(database_url: str) -> Iterator[Any]:
    """Sessions on a database of a test's own, migrated to head (re-encrypting, for one, touches
    every row of a database)."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def text_files(files: dict[str, str]) -> list[dict[str, str]]:
    return [{"path": path, "content": content} for path, content in files.items()]


def deploy(
    client: Any,
    tenant: Tenant,
    files: dict[str, str] | None = None,
    project_id: str | None = None,
    **extra: Any,
) -> str:
    body = {"projectId": project_id or tenant.project_id, **extra}
    if files is not None:
        body["initFiles"] = text_files(files)
    response = client.post("/deploy", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["deploymentId"]


def wait_for(
    client: Any,
    tenant: Tenant,
    deployment_id: str,
    *,
    timeout: float = 60.0,
    until: tuple[str, ...] = FINISHED,
) -> dict[str, Any]:
    """Poll /deploy-status until the deployment reaches one of ``until``; return the last body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        if body["status"] in until:
            return body
        time.sleep(0.05)
    raise AssertionError(f"deployment {deployment_id} did not reach {until} in {timeout} s: {body}")


def wait_for_step(
    client: Any, tenant: Tenant, deployment_id: str, step: str, status: str, *, timeout: float = 60.0
) -> dict[str, Any]:
    """Poll /deploy-status until ``step`` has ``status``; return the last body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
        if body["steps"][step]["status"] == status:
            return body
        time.sleep(0.05)
    raise AssertionError(f"step {step} of {deployment_id} did not reach {status} in {timeout} s: {body}")


def use_sandbox_provider(runtime: Runtime, project_id: str, name: str) -> None:
    """Make a project build with the sandbox provider registered under ``name``."""
    from libra_deploy.models import Project

    with transaction(runtime.sessions) as session:
        project = session.get(Project, project_id)
        assert project is not None
        project.sandbox_provider = name


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    """Run ``libra-deploy`` in this process's environment (same database and broker as the tests),
    or in ``env`` when given."""
    executable = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "libra-deploy"
    return subprocess.run(
        [str(executable), *args],
        env=env if env is not None else dict(os.environ),
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def deploy_completed(
    client: Any,
    tenant: Tenant,
    files: dict[str, str] | None = None,
    project_id: str | None = None,
    **extra: Any,
) -> str:
    """Deploy, wait for the end, check it completed; return the deployment id."""
    deployment_id = deploy(client, tenant, files, project_id=project_id, **extra)
    status = wait_for(client, tenant, deployment_id)
    assert status["status"] == "completed", status
    return deployment_id


@contextmanager
def custom_runtime(settings: Any, **overrides: Any) -> Iterator[Runtime]:
    """A runtime on the test database whose settings differ (room for every sandbox, a fake target...)."""
    runtime = Runtime.from_settings(dataclasses.replace(settings, **overrides))
    try:
        yield runtime
    finally:
        runtime.close()


@contextmanager
def custom_app(settings: Any, **overrides: Any) -> Iterator[Any]:
    """An app on the test database whose settings differ (small limits, public status...)."""
    from web import create_app

    with custom_runtime(settings, **overrides) as runtime:
        app = create_app(runtime)
        app.config["TESTING"] = True
        yield app


def queued_deployment(
    runtime: Runtime,
    tenant: Tenant,
    project_id: str | None = None,
    files: dict[str, str] | None = None,
    custom_domain: str | None = None,
) -> str:
    """Record a deployment as POST /deploy does, without publishing it: it stays queued, so it
    holds a quota reservation and counts as active for as long as a test needs (or until the test
    runs its steps itself)."""
    from libra_deploy.deployments import DeployRequest, start_deployment

    principal = Principal(tenant.org_id, tenant.user_id, "tok_test")
    request = DeployRequest(
        project_id=project_id or tenant.project_id,
        init_files=text_files(files or {"a.txt": "a"}),
        custom_domain=custom_domain,
    )
    with transaction(runtime.sessions) as session:
        return start_deployment(session, runtime.settings, runtime.store, principal, request).id


def sleeping_build(seconds: float, marker: str) -> dict[str, str]:
    """A package.json project whose build says "build started", sleeps, then writes dist/index.html.

    ``marker`` is on the build's command line, so that the test finds its processes from the host
    (inside bubblewrap's PID namespace, the build's own pid means nothing out here).
    """
    script = (
        "const fs = require('fs'); console.log('build started');"
        f"setTimeout(() => {{ fs.mkdirSync('dist', {{recursive: true}}); "
        f"fs.writeFileSync('dist/index.html', 'built after {seconds} s'); }}, {int(seconds * 1000)});"
    )
    package = {"scripts": {"build": f"node build.js {marker}"}}

    return {"package.json": json.dumps(package), "build.js": script}


def build_processes(marker: str) -> list[int]:
    """Host pids of the live processes (not zombies) whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() not in (proc / "cmdline").read_bytes():
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(proc.name))
    return found


def slow_printing_build(lines: int, pause_s: float) -> dict[str, str]:
    """A package.json project whose build prints ``lines`` numbered lines, one every ``pause_s``."""

    script = (
        "let i = 0; const t = setInterval(() => { i++; console.log('tick ' + i); "
        f"if (i === {lines}) {{ clearInterval(t); const fs = require('fs'); "
        "fs.mkdirSync('dist', {recursive: true}); fs.writeFileSync('dist/index.html', 'ticked'); } }, "
        f"{int(pause_s * 1000)});"
    )
    return {"package.json": json.dumps({"scripts": {"build": "node build.js"}}), "build.js": script}


def failing_build() -> dict[str, str]:

    return {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "console.log('about to fail'); process.exit(3);",
    }


@dataclass
class SseEvent:
    event: str
    data: Any
    id: str | None


def parse_sse(chunks: Any) -> Any:
    """Yield Server-Sent Events (``event``, JSON ``data``, ``id``) and ``None`` for each comment."""

    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields: dict[str, str] = {}
            comment = False
            for line in block.split("\n"):
                if line.startswith(":"):
                    comment = True
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            if "event" in fields:
                yield SseEvent(fields["event"], json.loads(fields.get("data", "null")), fields.get("id"))
            elif comment:
                yield None


@contextmanager
def service_on(env: dict[str, str]) -> Iterator[tuple[Runtime, Any]]:
    """A runtime with ``env`` over the test environment, used by the worker; a test client of an app on it."""

    from libra_deploy.config import Settings
    from tasks.runtime import get_runtime, set_runtime
    from web import create_app

    previous = get_runtime()
    runtime = Runtime.from_settings(Settings.from_env({**os.environ, **env}))
    set_runtime(runtime)
    try:
        app = create_app(runtime)
        app.config["TESTING"] = True
        yield runtime, app.test_client()
    finally:
        set_runtime(previous)
        runtime.close()
