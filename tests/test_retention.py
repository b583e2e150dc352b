"""Retention and garbage collection, and the adapter operations they rest on."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from libra_deploy import accounts
from libra_deploy.adapters.local_store import LocalObjectStore
from libra_deploy.adapters.local_target import LocalStaticTarget
from libra_deploy.db import scan, transaction
from libra_deploy.models import BlobCandidate, Deployment, Organization
from libra_deploy.retention import collect_garbage
from libra_deploy.runtime import Runtime
from libra_deploy.sources import blob_key, sha256_hex
from libra_deploy.steps.build import artifact_key, build_log_key
from libra_deploy.steps.cleanup import log_key
from libra_deploy.steps.runner import Outcome, run_step
from tests.helpers import (
    deploy,
    deploy_completed,
    migrated_sessions,
    queued_deployment,
    wait_for,
    wait_for_step,
)

ROOT = Path(__file__).resolve().parents[1]

# -- the adapters --------------------------------------------------------------------------------


def test_the_local_store_lists_keys_by_prefix(tmp_path):
    store = LocalObjectStore(tmp_path)
    for key in ("blobs/aa", "blobs/ab", "blobs/b", "logs/dep.log", "blobsy"):
        store.put(key, b"x")
    (tmp_path / "blobs" / ".tmp-half-written").write_bytes(b"x")

    assert sorted(store.list_keys("blobs/")) == ["blobs/aa", "blobs/ab", "blobs/b"]
    assert sorted(store.list_keys("blobs/a")) == ["blobs/aa", "blobs/ab"]
    assert sorted(store.list_keys("blobs")) == ["blobs/aa", "blobs/ab", "blobs/b", "blobsy"]
    assert list(store.list_keys("nothing/")) == []


def test_removing_a_deployment_keeps_the_files_others_use_and_is_idempotent(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    target = LocalStaticTarget(tmp_path / "sites")
    project, first, second = (f"{p}_{'0' * 20}{n:06}" for p, n in (("prj", 1), ("dep", 1), ("dep", 2)))
    blobs = {name: name.encode() for name in ("shared", "only-first", "only-second")}
    for data in blobs.values():
        store.put(blob_key(sha256_hex(data)), data)

    def manifest(*names: str):
        return {f"{n}.txt": {"sha256": sha256_hex(blobs[n]), "size": len(blobs[n])} for n in names}

    target.publish(project, first, manifest("shared", "only-first"), store)
    target.publish(project, second, manifest("shared", "only-second"), store)
    assert target.open(project, first, "only-first.txt") is not None

    target.remove(project, first)
    target.remove(project, first)

    assert target.open(project, first, "shared.txt") is None
    files = {p.name for p in (tmp_path / "sites" / project / "files").iterdir()}
    assert files == {sha256_hex(blobs["shared"]), sha256_hex(blobs["only-second"])}
    with target.open(project, second, "shared.txt").open() as f:
        assert f.read() == b"shared"
    target.remove(project, f"dep_{'9' * 26}")  # never published: nothing to do


# -- collection ----------------------------------------------------------------------------------


def _with(runtime: Runtime, **settings) -> Runtime:
    """The same database, store and target, with other retention settings."""
    changed = dataclasses.replace(runtime.settings, **settings)
    return Runtime(changed, runtime.engine, runtime.sessions, runtime.store, runtime.target)


def _version(n: int, run: str) -> dict[str, str]:
    return {"index.html": f"<h1>{n}</h1>", "shared.css": f"/* {run} */", f"v{n}.txt": f"only in {n} of {run}"}


def _blob(content: str) -> str:
    return blob_key(sha256_hex(content.encode()))


def _status(client, tenant, deployment_id: str) -> dict:
    return client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()


def test_gc_keeps_the_live_the_pinned_and_the_last_n_and_deletes_the_rest(
    client, runtime, worker, settings, tenant
):
    run = uuid.uuid4().hex
    ids = [deploy_completed(client, tenant, _version(n, run), replaceFiles=True) for n in range(1, 6)]
    first, second, third, fourth, fifth = ids
    assert client.put(f"/deployments/{first}/pin", headers=tenant.headers).status_code == 200
    assert (
        client.post(
            f"/projects/{tenant.project_id}/promote", json={"deploymentId": second}, headers=tenant.headers
        ).status_code
        == 200
    )
    keep_two = _with(runtime, retention_keep=2, gc_blob_grace_s=0)
    site = f"/sites/{tenant.project_id}"

    dry = collect_garbage(keep_two, dry_run=True)

    assert third in dry.expired_deployments
    assert _blob(f"only in 3 of {run}") in dry.deleted_blobs
    assert client.get(f"{site}@{third}/").status_code == 200
    assert runtime.store.missing([_blob(f"only in 3 of {run}")]) == set()

    report = collect_garbage(keep_two)

    mine = [d for d in report.expired_deployments if d in ids]
    assert mine == [third]
    assert client.get(f"{site}@{third}/").status_code == 404
    status = _status(client, tenant, third)
    assert "expiredAt" in status
    assert "deploymentUrl" not in status
    gone = _blob(f"only in 3 of {run}")
    assert gone in report.deleted_blobs
    assert runtime.store.missing([gone]) == {gone}
    assert runtime.store.missing([log_key(third)]) == {log_key(third)}
    assert not Path(
        settings.data_dir, "sites", tenant.project_id, "files", gone.removeprefix("blobs/")
    ).exists()
    for kept in (f"only in 1 of {run}", f"only in 2 of {run}", f"only in 4 of {run}", f"/* {run} */"):
        assert runtime.store.missing([_blob(kept)]) == set(), kept
    assert client.get(f"{site}/").get_data(as_text=True) == "<h1>2</h1>"
    for deployment_id, page in ((first, 1), (fourth, 4), (fifth, 5)):
        assert client.get(f"{site}@{deployment_id}/").get_data(as_text=True) == f"<h1>{page}</h1>"
    # An expired deployment can no longer go live or be pinned.
    promote = client.post(
        f"/projects/{tenant.project_id}/promote", json={"deploymentId": third}, headers=tenant.headers
    )
    assert promote.status_code == 409
    assert promote.get_json()["error"] == "DEPLOYMENT_EXPIRED"
    assert client.put(f"/deployments/{third}/pin", headers=tenant.headers).status_code == 409

    # Unpinned, the oldest goes too; the live one stays whatever its age.
    client.delete(f"/deployments/{first}/pin", headers=tenant.headers)
    assert [d for d in collect_garbage(keep_two).expired_deployments if d in ids] == [first]
    assert client.get(f"{site}@{second}/").status_code == 200


def test_an_expired_deployment_leaves_no_log_build_log_or_artifact(client, runtime, worker, tenant):
    built = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "const fs = require('fs');"
        "fs.mkdirSync('dist'); fs.writeFileSync('dist/index.html', 'built');",
    }
    old = deploy_completed(client, tenant, built)
    stored = [log_key(old), build_log_key(old), artifact_key(old)]
    assert runtime.store.missing(stored) == set()
    deploy_completed(client, tenant, {"index.html": "newer"}, replaceFiles=True)

    report = collect_garbage(_with(runtime, retention_keep=1))

    assert old in report.expired_deployments
    assert runtime.store.missing(stored) == set(stored)
    with runtime.sessions() as session:
        assert session.get(Deployment, old).artifact_key is None


def test_an_unreferenced_blob_waits_for_its_grace_period(client, runtime, worker, tenant):
    run = uuid.uuid4().hex
    ids = [deploy_completed(client, tenant, _version(n, run), replaceFiles=True) for n in range(1, 4)]
    orphan = _blob(f"only in 1 of {run}")

    waiting = collect_garbage(_with(runtime, retention_keep=1, gc_blob_grace_s=3600))

    assert ids[0] in waiting.expired_deployments
    assert orphan not in waiting.deleted_blobs
    assert runtime.store.missing([orphan]) == set()
    with runtime.sessions() as session:
        assert session.get(BlobCandidate, orphan) is not None

    collect_garbage(_with(runtime, retention_keep=1, gc_blob_grace_s=0))

    assert runtime.store.missing([orphan]) == {orphan}
    with runtime.sessions() as session:
        assert session.get(BlobCandidate, orphan) is None


SLOW_BUILD = """
const fs = require('fs');
setTimeout(() => {
  fs.mkdirSync('dist', { recursive: true });
  fs.writeFileSync('dist/index.html', '<h1>built during gc</h1>');
  fs.writeFileSync('dist/built.txt', process.env.RUN_MARK || 'built ' + Date.now());
}, 2500);
"""


@pytest.mark.stack
@pytest.mark.slow
def test_a_deployment_running_during_gc_completes(client, runtime, worker, tenant):
    run = uuid.uuid4().hex
    old = [deploy_completed(client, tenant, _version(n, run), replaceFiles=True) for n in range(1, 4)]
    files = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": SLOW_BUILD,
        "marker.txt": run,
    }
    running = deploy(client, tenant, files, replaceFiles=True)
    wait_for_step(client, tenant, running, "sync", "completed")
    # The build stores its output before the transaction that records it, and only the grace
    # covers that moment (retention.py): with none, a collection whose listing falls in between
    # deletes the output and the deploy step fails. So the grace is on, as in production, and the
    # running deployment's source files, which it and the project reference, must never even
    # become candidates for deletion: they are kept by reference, not by being recent.
    collector = _with(runtime, retention_keep=1, gc_blob_grace_s=60)
    own_files = {_blob(content) for content in files.values()}
    reports = []
    candidates: set[str] = set()
    stop = threading.Event()

    def collect_while_running() -> None:
        # Bounded: at most 100 runs, and it stops as soon as the deployment has finished.
        for _ in range(100):
            if stop.is_set():
                return
            reports.append(collect_garbage(collector))
            with runtime.sessions() as session:
                candidates.update(session.scalars(select(BlobCandidate.key)))
            stop.wait(0.1)

    thread = threading.Thread(target=collect_while_running)
    thread.start()
    try:
        status = wait_for(client, tenant, running, timeout=120)
    finally:
        stop.set()
        thread.join(60)

    assert status["status"] == "completed", status
    assert reports, "gc never ran while the deployment ran"
    assert not own_files & candidates, "a running deployment's own files became candidates for deletion"
    expired = {d for report in reports for d in report.expired_deployments}
    assert set(old[:2]) <= expired
    assert client.get(f"/sites/{tenant.project_id}/").get_data(as_text=True) == "<h1>built during gc</h1>"
    assert client.get(f"/sites/{tenant.project_id}@{running}/built.txt").status_code == 200
    # What the finished deployment uses survives a collection without grace as well.
    collect_garbage(_with(runtime, retention_keep=1, gc_blob_grace_s=0))
    assert client.get(f"/sites/{tenant.project_id}/built.txt").status_code == 200
    assert runtime.store.missing([_blob(run)]) == set()
    assert _status(client, tenant, old[2]).get("expiredAt")


@pytest.mark.stack
def test_a_collection_without_grace_keeps_what_a_running_deployment_has_recorded(runtime, tenant):
    """Between its build and its deploy step, a deployment's output is referenced by it alone (not
    by the project, which keeps the sources): a collection with no grace must leave it in place.
    The steps run one by one in this process, so the collection falls exactly in between."""
    run = uuid.uuid4().hex
    built = f"<p>built {run}</p>"
    script = "const fs = require('fs'); fs.mkdirSync('dist', { recursive: true });"
    script += f" fs.writeFileSync('dist/index.html', {json.dumps(built)});"
    files = {"package.json": json.dumps({"scripts": {"build": "node build.js"}}), "build.js": script}
    deployment_id = queued_deployment(runtime, tenant, files=files)
    for step in ("validate", "sync", "sandbox", "build"):
        assert run_step(runtime, step, deployment_id, f"{step}-{run}").outcome is Outcome.RAN
    assert runtime.store.missing([_blob(built)]) == set()

    report = collect_garbage(_with(runtime, retention_keep=1, gc_blob_grace_s=0))

    assert _blob(built) not in report.deleted_blobs
    assert runtime.store.missing([_blob(built)]) == set()
    for step in ("deploy", "cleanup"):
        assert run_step(runtime, step, deployment_id, f"{step}-{run}").outcome is Outcome.RAN
    served = runtime.target.open(tenant.project_id, deployment_id, "index.html")
    assert served is not None
    with served.open() as content:
        assert content.read() == built.encode()


@pytest.mark.slow
def test_gc_reads_on_sqlite_leave_the_write_lock_to_writers(tmp_path):
    # Every SQLite transaction begins IMMEDIATE (the one write lock); gc's scans of every manifest
    # must not hold it, or the steps, the API and the heartbeats wait for them (and fail after 30 s).
    written = threading.Event()
    with migrated_sessions(f"sqlite:///{tmp_path / 'embedded.db'}") as sessions:

        def write() -> None:
            with transaction(sessions) as session:
                accounts.create_organization(session, "written during a scan")
            written.set()

        with scan(sessions) as session:
            session.execute(select(Organization.id)).all()
            writer = threading.Thread(target=write)
            writer.start()
            assert written.wait(5), "the write waited for the scan to end"
        writer.join()


def test_the_gc_command_reports_as_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["LIBRA_DATA_DIR"] = str(tmp_path / "data")
    cli = str(ROOT / ".venv" / "bin" / "libra-deploy")

    result = subprocess.run([cli, "gc", "--dry-run"], env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "dryRun": True,
        "expiredDeployments": [],
        "deletedBlobs": [],
        "pendingBlobs": 0,
        "errors": [],
    }
    assert "gc would remove 0 deployments and 0 blobs" in result.stderr
