"""Organisations, tokens and projects for a benchmark, and the deploy requests it sends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from bench.stack import Stack

#: The issue's "3-file static site".
SITE = {
    "index.html": "<!doctype html><link rel=stylesheet href=site.css><h1>Hello</h1><script src=app.js>",
    "site.css": "h1 { color: teal }",
    "app.js": "console.log('hello')",
}


@dataclass(frozen=True)
class Tenant:
    org_id: str
    user_id: str
    token: str
    project_ids: list[str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_tenant(stack: Stack, projects: int) -> Tenant:
    """One organisation, user and token (through the service's own functions), and ``projects``
    projects bulk-inserted with ids of the service's format."""
    from libra_deploy import accounts, auth
    from libra_deploy.config import Settings
    from libra_deploy.db import transaction
    from libra_deploy.runtime import Runtime

    runtime = Runtime.from_settings(Settings.from_env(stack.env))
    suffix = uuid.uuid4().hex[:8]
    try:
        with transaction(runtime.sessions) as session:
            org = accounts.create_organization(session, f"bench-{suffix}")
            user = accounts.create_user(session, org.id, f"bench-{suffix}@example.io")
            _row, token = auth.create_token(session, org_id=org.id, user_id=user.id)
            org_id, user_id = org.id, user.id
    finally:
        runtime.close()
    rows = stack.sql(
        """
        INSERT INTO projects (id, org_id, name, is_active, deployment_status, source_manifest,
                              spa_fallback, created_at, updated_at)
        SELECT 'prj_' || substr(md5(%(salt)s || i::text) || md5(i::text || %(salt)s), 1, 26),
               %(org)s, 'site-' || i, true, 'idle', '{}', true, now(), now()
        FROM generate_series(1, %(n)s) AS i
        RETURNING id
        """,
        {"salt": suffix, "org": org_id, "n": projects},
    )
    return Tenant(org_id, user_id, token, [r[0] for r in rows])


def deploy_body(project_id: str, files: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "projectId": project_id,
        "initFiles": [{"path": p, "content": c} for p, c in (files or SITE).items()],
        "replaceFiles": True,
    }


def post_deploy(session: Any, base_url: str, tenant: Tenant, project_id: str, **body: Any) -> str:
    """POST /deploy; return the deployment id (any answer but 202 stops the benchmark)."""
    response = session.post(
        f"{base_url}/deploy", json={**deploy_body(project_id), **body}, headers=tenant.headers, timeout=60
    )
    if response.status_code != 202:
        raise RuntimeError(f"POST /deploy answered {response.status_code}: {response.text[:300]}")
    return str(response.json()["deploymentId"])


def post_many(base_url: str, tenant: Tenant, project_ids: list[str], clients: int = 8) -> dict[str, float]:
    """POST one deployment per project from ``clients`` threads; return {deployment id: POST time}."""
    import threading
    import time

    import requests

    started: dict[str, float] = {}
    lock = threading.Lock()
    todo = list(project_ids)

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if not todo:
                        return
                    project_id = todo.pop(0)
                at = time.time()
                deployment_id = post_deploy(session, base_url, tenant, project_id)
                with lock:
                    started[deployment_id] = at

    threads = [threading.Thread(target=client) for _ in range(min(clients, len(project_ids)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return started


def wait_finished(
    stack: Stack, deployment_ids: list[str], timeout: float = 600
) -> dict[str, tuple[str, float]]:
    """Wait until every deployment finished; return {id: (status, finished_at as a UNIX time)}."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        rows = stack.sql(
            "SELECT id, status, extract(epoch FROM finished_at) FROM deployments "
            "WHERE id = ANY(%s) AND status IN ('completed', 'failed', 'cancelled') "
            "AND finished_at IS NOT NULL",
            (deployment_ids,),
        )
        if len(rows) == len(deployment_ids):
            return {r[0]: (r[1], float(r[2])) for r in rows}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(deployment_ids) - len(rows)} deployments did not finish in {timeout} s")
        time.sleep(0.02)
