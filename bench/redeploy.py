"""A 1,000-file site deployed, then deployed again unchanged, as a client of the upload-by-hash API
does it: ask which hashes are missing, upload those (8 client threads), POST /deploy naming every
file by hash, wait until it completed.

Measured on the second deployment: the files the client uploaded, the objects and bytes the deploy
target received (the deploy step's own count, and the objects counted in the target's storage
before and after), and the time from the first request to ``finished_at`` over the first
deployment's.

Each deploy target is a :class:`Target` (its settings and how to count what it stores); the
benchmark runs every target in ``TARGETS``: the local directory, and an S3 bucket on a loopback
``moto_server``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests

from bench.common import Result, rounded
from bench.stack import BIN, Stack, free_port, stack, wait_until
from bench.tenants import Tenant, make_tenant, wait_finished

NAME = "redeploy"
FILES = 1000


@dataclass(frozen=True)
class Target:
    name: str
    #: Settings the service runs with for this target.
    environment: Callable[[Stack], dict[str, str]]
    #: How many objects the target stores for a project, counted in its own storage.
    count_objects: Callable[[Stack, str], int]


def _local_objects(s: Stack, project_id: str) -> int:
    files = Path(s.env["LIBRA_DATA_DIR"]) / "sites" / project_id / "files"
    return sum(1 for _ in files.iterdir()) if files.is_dir() else 0


#: The S3 target's bucket, on a moto_server of the benchmark's own.
SITES_BUCKET = "libra-bench-sites"


def _s3_client(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["S3_SECRET_ACCESS_KEY"],
    )


def _s3_environment(s: Stack) -> dict[str, str]:
    """moto_server on a spare loopback port, spawned on the stack so that it stops with it, and the
    settings of an S3 target on a bucket created there."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = s.spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
    wait_until(lambda: server.poll() is not None or _answers(url), 30, f"moto_server on {url}", interval=0.2)
    if server.poll() is not None:
        raise RuntimeError(f"moto_server exited with {server.returncode}: {s.log('moto')[-500:]}")
    env = {
        "DEPLOY_TARGET": "s3",
        "S3_ENDPOINT_URL": url,
        "S3_ACCESS_KEY_ID": "bench-access-key",
        "S3_SECRET_ACCESS_KEY": "bench-secret-access-key",
        "SITES_BUCKET": SITES_BUCKET,
    }
    _s3_client(env).create_bucket(Bucket=SITES_BUCKET)
    return env


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        return False


def _s3_objects(s: Stack, project_id: str) -> int:
    """The distinct contents (ETags) of the project's files in the bucket (sites/<project>/<deployment>/...).

    Every deployment has a prefix of its own, so a redeploy adds a key per file, copied inside the
    bucket (CopyObject keeps the ETag, and sends no bytes): counting contents, as the local target's
    files/<sha256> does, is what counts uploads. The manifests (_deployments/) and the live pointer
    are not files of the site.
    """
    prefix = f"sites/{project_id}/"
    pages = _s3_client(s.env).get_paginator("list_objects_v2").paginate(Bucket=SITES_BUCKET, Prefix=prefix)
    return len(
        {
            item["ETag"]
            for page in pages
            for item in page.get("Contents", ())
            if "/" in (key := item["Key"].removeprefix(prefix)) and not key.startswith("_deployments/")
        }
    )


TARGETS = [
    Target("local", lambda _s: {"DEPLOY_TARGET": "local"}, _local_objects),
    Target("s3", _s3_environment, _s3_objects),
]


def site() -> dict[str, bytes]:
    """1,000 small files of a static site, in a few directories."""
    files = {"index.html": b"<!doctype html><h1>A big static site</h1>"}
    for i in range(1, FILES):
        folder = ("docs", "blog", "assets", "img")[i % 4]
        files[f"{folder}/page-{i:04d}.html"] = f"<h1>Page {i}</h1>\n".encode() + b"lorem ipsum " * (
            i % 50 + 20
        )
    return files


@dataclass(frozen=True)
class Deployed:
    seconds: float
    client_uploads: int
    deployment_id: str


def deploy(s: Stack, url: str, tenant: Tenant, project_id: str, files: dict[str, bytes]) -> Deployed:
    hashes = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    by_hash = {sha: files[path] for path, sha in hashes.items()}
    started = time.time()
    with requests.Session() as session:
        check = session.post(
            f"{url}/projects/{project_id}/files/check",
            json={"hashes": sorted(by_hash)},
            headers=tenant.headers,
            timeout=60,
        )
        check.raise_for_status()
        missing: list[str] = check.json()["missing"]
    _upload(url, tenant, project_id, {sha: by_hash[sha] for sha in missing})
    with requests.Session() as session:
        response = session.post(
            f"{url}/deploy",
            json={
                "projectId": project_id,
                "replaceFiles": True,
                "files": [{"path": path, "sha256": sha} for path, sha in hashes.items()],
            },
            headers=tenant.headers,
            timeout=60,
        )
    if response.status_code != 202:
        raise RuntimeError(f"POST /deploy answered {response.status_code}: {response.text[:300]}")
    deployment_id = response.json()["deploymentId"]
    status, finished_at = wait_finished(s, [deployment_id])[deployment_id]
    if status != "completed":
        raise RuntimeError(f"deployment {deployment_id} is {status}")
    return Deployed(finished_at - started, len(missing), deployment_id)


def _upload(url: str, tenant: Tenant, project_id: str, blobs: dict[str, bytes], clients: int = 8) -> None:
    todo = list(blobs.items())
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if not todo:
                        return
                    sha, data = todo.pop()
                answer = session.put(
                    f"{url}/projects/{project_id}/files/{sha}", data=data, headers=tenant.headers, timeout=60
                )
                if answer.status_code >= 300:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} uploads failed, e.g. {failures[0]}")


def published(s: Stack, deployment_id: str) -> tuple[int, int]:
    """(objects, bytes) the deploy step says it uploaded to the target (ports.PublishResult)."""
    rows = s.sql(
        "SELECT message FROM deployment_logs WHERE deployment_id = %s AND step = 'deploy' "
        "AND message LIKE 'Published %%'",
        (deployment_id,),
    )
    found = re.search(r"\((\d+) uploaded, (\d+) bytes\)", rows[0][0]) if rows else None
    if found is None:
        raise RuntimeError(f"deployment {deployment_id} logged no 'Published' line")
    return int(found.group(1)), int(found.group(2))


def run_target(target: Target) -> dict[str, Any]:
    files = site()
    with stack(f"redeploy_{target.name}") as s:
        s.env.update(target.environment(s))
        url = s.start_web()
        s.start_worker()
        tenant = make_tenant(s, projects=1)
        project_id = tenant.project_ids[0]
        first = deploy(s, url, tenant, project_id, files)
        before = target.count_objects(s, project_id)
        second = deploy(s, url, tenant, project_id, files)
        after = target.count_objects(s, project_id)
        objects, sent = published(s, second.deployment_id)
        first_objects, first_bytes = published(s, first.deployment_id)
    return {
        "files": len(files),
        "first_s": round(first.seconds, 3),
        "second_s": round(second.seconds, 3),
        "ratio": round(second.seconds / first.seconds, 3),
        "first_objects_uploaded": first_objects,
        "first_bytes_uploaded": first_bytes,
        "second_objects_uploaded": objects,
        "second_bytes_uploaded": sent,
        "second_objects_counted_in_target": after - before,
        "second_client_uploads": second.client_uploads,
    }


def run(quick: bool) -> Result:
    measured = {target.name: run_target(target) for target in TARGETS}
    ok = all(
        m["second_objects_uploaded"] == 0
        and m["second_objects_counted_in_target"] == 0
        and m["second_client_uploads"] == 0
        and m["ratio"] <= 0.2
        for m in measured.values()
    )
    # The row shows the target furthest from the time target, so that a miss shows in its numbers;
    # every target's are in details.
    worst = max(measured, key=lambda name: measured[name]["ratio"])
    shown = measured[worst]
    return Result(
        value=shown["second_s"],
        baseline=shown["first_s"],
        ratio=rounded(shown["ratio"]),
        unit=f"s (second deploy vs first; {worst}, the highest ratio of {' and '.join(measured)})",
        target="on every target: 0 objects uploaded; time <= 0.2 x first",
        met=ok,
        details=measured,
    )
