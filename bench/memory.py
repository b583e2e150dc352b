"""Resident memory of the worker (prefork 5, then threads 5) and of the web processes while
1,000 deployments run (100 with --quick), sampled every 100 completed deployments (every 10).

Five client threads each POST a 3-file site and wait for it to finish, so five deployments run at a
time (the sandbox-slot cap) through gunicorn and the worker, as in production. Flat means the
last sample is at most 1.2 x the first; the target for a worker process is under 150 MiB.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import requests

from bench.common import Result, rounded
from bench.stack import Stack, stack
from bench.tenants import Tenant, make_tenant, post_deploy

NAME = "memory"
MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def processes(s: Stack, name: str) -> list[int]:
    """The process itself and its children (prefork's pool, gunicorn's workers)."""
    pid = s.pid(name)
    return [pid, *_children(pid)]


def sample(pids: list[int]) -> dict[int, float]:
    return {pid: _status_kib(pid, "VmRSS") / 1024 for pid in pids}


def _drive(s: Stack, url: str, tenant: Tenant, every: int, on_sample: Callable[[int], None]) -> None:
    projects = iter(tenant.project_ids)
    lock = threading.Lock()
    done = 0
    errors: list[str] = []

    def client() -> None:
        nonlocal done
        with requests.Session() as session, psycopg.connect(s.database_url, autocommit=True) as conn:
            while True:
                with lock:
                    project = next(projects, None)
                if project is None:
                    return
                deployment_id = post_deploy(session, url, tenant, project)
                status = _wait(conn, deployment_id)
                if status != "completed":
                    errors.append(f"{deployment_id} {status}")
                with lock:
                    done += 1
                    if done % every == 0:
                        on_sample(done)

    threads = [threading.Thread(target=client) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} deployments did not complete, e.g. {errors[0]}")


def _wait(conn: psycopg.Connection, deployment_id: str) -> str:
    """Wait until the deployment finished and its cleanup ran (its slot is free); return its status."""
    while True:
        row = conn.execute(
            "SELECT d.status, s.status FROM deployments AS d JOIN deployment_steps AS s "
            "ON s.deployment_id = d.id AND s.step = 'cleanup' WHERE d.id = %s",
            (deployment_id,),
        ).fetchone()
        if row and row[0] in ("completed", "failed", "cancelled") and row[1] in ("completed", "failed"):
            return str(row[0])
        time.sleep(0.02)


def run_pool(pool: str, total: int, every: int) -> dict[str, object]:
    with stack(f"memory_{pool}") as s:
        url = s.start_web()
        s.start_worker(pool=pool)
        tenant = make_tenant(s, projects=total)
        worker_samples: list[float] = []
        web_samples: list[float] = []
        per_process: list[dict[int, float]] = []

        def on_sample(_done: int) -> None:
            worker = sample(processes(s, "worker"))
            web = sample(processes(s, "web")[1:])  # gunicorn's workers, not its arbiter
            per_process.append(worker)
            worker_samples.append(max(worker.values()))
            web_samples.append(max(web.values()))

        _drive(s, url, tenant, every, on_sample)
        worker_peak = max(_status_kib(pid, "VmHWM") for pid in processes(s, "worker")) / 1024
        web_peak = max(_status_kib(pid, "VmHWM") for pid in processes(s, "web")[1:]) / 1024
    return {
        "pool": f"{pool} 5",
        "deployments": total,
        "sample_every": every,
        "worker_mib_per_process_samples": [round(x, 1) for x in worker_samples],
        "worker_processes": len(per_process[-1]),
        "worker_peak_mib": round(worker_peak, 1),
        "worker_growth": round(worker_samples[-1] / worker_samples[0], 3),
        "web_mib_samples": [round(x, 1) for x in web_samples],
        "web_peak_mib": round(web_peak, 1),
        "web_growth": round(web_samples[-1] / web_samples[0], 3),
    }


def run(quick: bool) -> Result:
    total, every = (100, 10) if quick else (1000, 100)
    measured = {pool: run_pool(pool, total, every) for pool in ("prefork", "threads")}
    peak = max(float(str(m["worker_peak_mib"])) for m in measured.values())
    growth = max(float(str(m[key])) for m in measured.values() for key in ("worker_growth", "web_growth"))
    return Result(
        value=rounded(peak, 1),
        baseline=None,
        ratio=rounded(growth),
        unit="MiB peak per worker process (ratio: last/first sample)",
        target="flat (last <= 1.2 x first sample); worker process < 150 MiB",
        met=peak < 150 and growth <= 1.2,
        details=measured,
    )
