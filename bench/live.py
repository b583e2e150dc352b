"""The embedded default: from POST /deploy to the new page being served by ``libra-deploy up``.

``libra-deploy up`` runs in a subprocess with a fresh data directory (SQLite, the embedded broker,
worker threads, the local target), exactly as a user starts it. Each deployment changes the 3-file
site's index.html; the time is from just before the POST to the first GET /sites/<project>/ that
returns the new page (polled every 5 ms). Sequential, p50 and p95.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from bench.common import Result, percentile, rounded
from bench.stack import ADMISSION_UNREFUSED, BIN, ROOT, free_port, wait_until
from bench.tenants import SITE

NAME = "live"


def _start(data_dir: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(
        {"LIBRA_DATA_DIR": str(data_dir), "PORT": str(port), "LOG_LEVEL": "WARNING", **ADMISSION_UNREFUSED}
    )
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "libra-deploy"), "up"], cwd=ROOT, env=env, stdout=out, stderr=out)
    text = wait_until(lambda: (t := log.read_text()) and "Token:" in t and "Project:" in t and t, 120, "up")
    token = re.search(r"Token:\s+(\S+)", text)
    project = re.search(r"Project:\s+(\S+)", text)
    if token is None or project is None:
        raise RuntimeError(f"libra-deploy up printed no token or project:\n{text}")
    return proc, token.group(1), project.group(1)


def run(quick: bool) -> Result:
    count = 20 if quick else 50
    workdir = Path(tempfile.mkdtemp(prefix="libra-bench-live-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, token, project = _start(workdir / "data", port, workdir / "up.log")
    times: list[float] = []
    try:
        with requests.Session() as session:
            headers = {"Authorization": f"Bearer {token}"}
            for i in range(count + 1):
                marker = f"deployment number {i}"
                files = {**SITE, "index.html": SITE["index.html"] + f"<p>{marker}</p>"}
                body = {"projectId": project, "replaceFiles": True,
                        "initFiles": [{"path": p, "content": c} for p, c in files.items()]}  # fmt: skip
                started = time.perf_counter()
                response = session.post(f"{base}/deploy", json=body, headers=headers, timeout=30)
                if response.status_code != 202:
                    raise RuntimeError(f"POST /deploy answered {response.status_code}: {response.text[:200]}")
                wait_until(
                    lambda m=marker: m in session.get(f"{base}/sites/{project}/", timeout=10).text,
                    60, f"deployment {i} to be served", interval=0.005,
                )  # fmt: skip
                if i:  # the first one warms the process up
                    times.append(time.perf_counter() - started)
                # The project's next deployment may start once this one has finished its cleanup.
                deployment_id = response.json()["deploymentId"]
                wait_until(
                    lambda d=deployment_id: session.get(
                        f"{base}/deploy-status", params={"id": d}, headers=headers
                    ).json()["status"] == "completed",
                    60, "the deployment to complete", interval=0.01,
                )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    p50, p95 = percentile(times, 50), percentile(times, 95)
    return Result(
        value=rounded(p50, 3),
        baseline=None,
        ratio=None,
        unit="s p50 POST-to-served",
        target="p50 <= 1 s (3-file site, libra-deploy up)",
        met=p50 <= 1.0,
        details={
            "deployments": count,
            "p50_s": round(p50, 3),
            "p95_s": round(p95, 3),
            "max_s": round(max(times), 3),
        },
    )
