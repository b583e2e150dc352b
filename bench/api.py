"""POST /deploy under gunicorn against a bare Flask app doing one INSERT and one publish.

Both apps run under gunicorn with the service's settings (gunicorn.conf.py: 2 gthread workers), on
the same private database and Redis, loaded by wrk on loopback with 16 connections, one request
per connection (``Connection: close`` on both sides). No worker runs: the deployments stay queued,
so between runs they are marked failed to free their projects (one active deployment per project).

Saturation: requests/s of each, interleaved A B A B, medians. Then our p99 at half the bare
endpoint's saturation rate (each connection pauses between requests to hold that rate).
"""

from __future__ import annotations

import json
import time

from bench import wrk
from bench.common import Result, interleave, median, rounded
from bench.stack import stack
from bench.tenants import deploy_body, make_tenant

NAME = "api"
#: Projects to deploy (one active deployment per project), reused only after their deployments are
#: marked failed.
PROJECTS = 40_000


def run(quick: bool) -> Result:
    seconds, runs = (4, 2) if quick else (10, 3)
    with stack("api") as s:
        s.sql(_bare_ddl())
        ours = s.start_web(name="web")
        bare = s.start_web("bench.bare_flask:create_app()", name="bare")
        tenant = make_tenant(s, projects=PROJECTS)
        template = json.dumps(deploy_body("{item}"))
        socket_errors: list[int] = []
        cursor = 0

        def load(url: str, pause_ms: float = 0.0, duration: float = seconds) -> wrk.Load:
            nonlocal cursor
            # Every request takes a project no earlier request used: one still in flight when wrk
            # stopped may yet queue a deployment, and a project with one answers 409.
            if cursor > len(tenant.project_ids) // 2:
                time.sleep(2)
                cursor = 0
            # Every run starts with no active deployment and an empty quota ledger, so that what the
            # admission counts stays as small as the default limits keep it, instead of growing with
            # every earlier run.
            s.sql("UPDATE deployments SET status = 'failed' WHERE status IN ('queued', 'in_progress')")
            s.sql("DELETE FROM quota_ledger")
            result = wrk.run(
                url, method="POST", path="/deploy", items=tenant.project_ids[cursor:], token=tenant.token,
                body_template=template, seconds=duration, pause_ms=pause_ms,
            )  # fmt: skip
            if url == ours:
                cursor += result.requests + 100
            if result.status_errors:
                raise RuntimeError(
                    f"{result.status_errors} of {result.requests} answers from {url} were errors"
                )
            socket_errors.append(result.socket_errors)
            return result

        # Warm both (imports, connection pools, prepared statements) before measuring.
        load(bare, duration=2)
        load(ours, duration=2)
        bare_runs, our_runs = interleave(runs, lambda: load(bare).rate, lambda: load(ours).rate)
        bare_rate, our_rate = median(bare_runs), median(our_runs)

        # Hold half the bare saturation rate: each of the 16 connections waits between requests.
        target = bare_rate / 2
        first = load(ours, pause_ms=16_000 / target)
        at_half = load(ours, pause_ms=max(0.0, 16_000 / target - first.mean_ms))

    ratio = our_rate / bare_rate
    return Result(
        value=rounded(our_rate, 0),
        baseline=rounded(bare_rate, 0),
        ratio=rounded(ratio),
        unit="requests/s",
        target=">= 0.7 x bare; p99 <= 50 ms at 0.5 x bare saturation",
        met=ratio >= 0.7 and at_half.p99_ms <= 50 and at_half.socket_errors == 0,
        details={
            "runs_requests_per_s": [round(x) for x in our_runs],
            "runs_bare_requests_per_s": [round(x) for x in bare_runs],
            "half_saturation_target_per_s": round(target),
            "half_saturation_achieved_per_s": round(at_half.rate),
            "half_saturation_p50_ms": round(at_half.p50_ms, 1),
            "half_saturation_p99_ms": round(at_half.p99_ms, 1),
            "half_saturation_socket_errors": at_half.socket_errors,
            "socket_errors_all_runs": sum(socket_errors),
            "gunicorn": "gunicorn.conf.py (2 gthread workers x 8 threads), Connection: close",
            "load": "wrk -t2 -c16",
        },
    )


def _bare_ddl() -> str:
    from bench.bare_flask import TABLE_DDL

    return TABLE_DDL
