"""Deployments through the whole pipeline against bare six-task Celery chains, same broker and worker.

Throughput: N deployments of a 3-file static site POSTed at once (8 client threads) through
gunicorn, six tasks each on a Celery worker (prefork 5, the Procfile's), every step recorded in
PostgreSQL, local sandbox, store and target; against N bare chains of six no-op tasks published at
once to the same Redis, run by a worker of the same settings. Runs interleave A B A B; medians.

Latency: one at a time, POST to ``finished_at`` of a completed deployment, against publish to the
last no-op task of one bare chain (the issue's "12 ms"), interleaved per item.

The sandbox-slot cap (MAX_CONCURRENT_DEPLOYMENTS, default 5) is raised to the batch size for this
comparison: every slot is still taken and given back (the advisory lock, the counts, the writes),
but no deployment waits for one, because the bare chain has no such throttle and waiting is not
bookkeeping. A waiting deployment asks again every SLOT_WAIT_INTERVAL (1 s), so a burst at the
default cap measures that interval; the full run reports one batch of 50 at the default cap beside.
"""

from __future__ import annotations

import os
import time
import uuid
from types import ModuleType

import redis
import requests

from bench.common import RESULTS, Result, median, percentile, rounded
from bench.cpu import CpuMeter
from bench.profile import sampled, summarize
from bench.redis_commands import CommandMeter
from bench.stack import Stack, stack
from bench.tenants import Tenant, make_tenant, post_deploy, post_many, wait_finished

NAME = "pipeline"
#: Where ``--profile`` keeps the worker's py-spy samples (bench/profile.py).
PROFILE_FILE = RESULTS / "pipeline-worker.pyspy"
#: Deployments of the batch run at the default cap of 5 sandbox slots (the rest wait in line).
DEFAULT_CAP_BATCH = 50


def _bare_app(broker_url: str) -> ModuleType:
    # celeryconfig reads the broker URL when it is loaded (on the app's first look at its settings):
    # give it this run's. Then take it out of the environment again: Celery prefers
    # CELERY_BROKER_URL to any broker an app is given, so it would outlive this benchmark's Redis.
    previous = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = broker_url
    try:
        from bench import bare_celery

        bare_celery.app.conf.broker_url = broker_url
    finally:
        if previous is None:
            del os.environ["CELERY_BROKER_URL"]
        else:
            os.environ["CELERY_BROKER_URL"] = previous
    return bare_celery


def _bare_batch(bare_celery: ModuleType, r: redis.Redis, n: int) -> tuple[float, list[float]]:
    ids = [uuid.uuid4().hex for _ in range(n)]
    published: dict[str, float] = {}
    start = time.time()
    for unit in ids:
        published[unit] = time.time()
        bare_celery.bare_chain(unit).apply_async()
    while r.hlen(bare_celery.DONE_KEY) < n:
        time.sleep(0.005)
    done = {k.decode(): float(v) for k, v in r.hgetall(bare_celery.DONE_KEY).items()}
    r.delete(bare_celery.DONE_KEY)
    end = max(done.values())
    return n / (end - start), [done[u] - published[u] for u in ids]


def _our_batch(s: Stack, url: str, tenant: Tenant, projects: list[str]) -> tuple[float, list[float]]:
    start = time.time()
    posted = post_many(url, tenant, projects)
    finished = wait_finished(s, list(posted))
    failed = [i for i, (status, _at) in finished.items() if status != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} deployments did not complete, e.g. {failed[0]}")
    end = max(at for _status, at in finished.values())
    return len(projects) / (end - start), [finished[i][1] - posted[i] for i in posted]


def _bare_one(bare_celery: ModuleType, r: redis.Redis) -> float:
    unit = uuid.uuid4().hex
    start = time.time()
    bare_celery.bare_chain(unit).apply_async()
    while (done := r.hget(bare_celery.DONE_KEY, unit)) is None:
        time.sleep(0.001)
    r.hdel(bare_celery.DONE_KEY, unit)
    return float(done) - start


def _our_one(
    s: Stack, session: requests.Session, url: str, tenant: Tenant, project_id: str
) -> tuple[str, float]:
    start = time.time()
    deployment_id = post_deploy(session, url, tenant, project_id)
    status, finished_at = wait_finished(s, [deployment_id])[deployment_id]
    if status != "completed":
        raise RuntimeError(f"deployment {deployment_id} is {status}")
    return deployment_id, finished_at - start


def _step_timeline(s: Stack, deployment_ids: list[str]) -> dict[str, dict[str, float]]:
    """Where one deployment's time goes, step by step, from what the steps recorded (medians, ms).

    ``start`` and ``end`` are a step's ``started_at`` (set as *begin* marks it in progress) and
    ``finished_at`` (set as *record* begins), counted from the deployment's ``created_at``; ``gap``
    is the time from the previous step's ``finished_at`` to this one's ``started_at``: the previous
    step's record and commit, the chain's publish, the delivery, and the statement that begins this
    step (for the first step: from ``created_at``, so the rest of the POST, its commit and the
    chain's publish). The bare chain spends about 2 ms per task on all of it.
    """
    rows = s.sql(
        "SELECT s.deployment_id, s.step,"
        " extract(epoch FROM s.started_at - d.created_at) * 1000,"
        " extract(epoch FROM s.finished_at - d.created_at) * 1000"
        " FROM deployment_steps s JOIN deployments d ON d.id = s.deployment_id"
        " WHERE s.deployment_id = ANY(%s) ORDER BY s.deployment_id, s.position",
        (deployment_ids,),
    )
    starts: dict[str, list[float]] = {}
    ends: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}
    order: list[str] = []
    previous_end: dict[str, float] = {}
    for deployment_id, step, started, finished in rows:
        if step not in order:
            order.append(step)
        starts.setdefault(step, []).append(float(started))
        ends.setdefault(step, []).append(float(finished))
        gaps.setdefault(step, []).append(float(started) - previous_end.get(deployment_id, 0.0))
        previous_end[deployment_id] = float(finished)
    return {
        step: {
            "start": round(median(starts[step]), 1),
            "end": round(median(ends[step]), 1),
            "gap": round(median(gaps[step]), 1),
        }
        for step in order
    }


def run(quick: bool, pool: str = "prefork", profile: bool = False) -> Result:
    """The comparison; with ``profile``, one more batch runs with the worker sampled by py-spy."""
    n, runs, sequential = (100, 2, 15) if quick else (200, 3, 40)
    warmup = 10
    with stack("pipeline", {"MAX_CONCURRENT_DEPLOYMENTS": str(n)}) as s:
        url = s.start_web()
        s.start_worker("worker", "tasks", pool)
        s.start_worker("bare", "bench.bare_celery", pool)
        bare = _bare_app(s.broker_url)
        r = redis.Redis.from_url(s.broker_url)
        # One batch more than the runs for the default cap's batch, and one for the profiled run.
        tenant = make_tenant(s, projects=warmup + n * (runs + 1 + profile) + sequential)
        projects = iter(tenant.project_ids)

        # Warm both workers (every prefork child imports and connects on its first task).
        _bare_batch(bare, r, warmup)
        _our_batch(s, url, tenant, [next(projects) for _ in range(warmup)])

        bare_rates, our_rates = [], []
        load_latencies: list[float] = []
        # Where each side's CPU goes, over the measured batches (bench/cpu.py).
        postgres = {"postgres": "postgres"}
        our_cpu = CpuMeter({"worker": s.pid("worker"), "web": s.pid("web"), "redis": s.redis_pid}, postgres)
        bare_cpu = CpuMeter({"bare worker": s.pid("bare"), "redis": s.redis_pid}, postgres)
        # What each side asks of Redis (bench/redis_commands.py); the bare side's wait for its chains
        # (HLEN, HGETALL, DEL of the key their last tasks fill) is the benchmark's.
        our_commands = CommandMeter(r)
        bare_commands = CommandMeter(r, not_counted=frozenset({"hlen", "hgetall", "del"}))
        for _ in range(runs):
            with bare_cpu.batch(n), bare_commands.batch(n):
                rate, _lat = _bare_batch(bare, r, n)
            bare_rates.append(rate)
            with our_cpu.batch(n), our_commands.batch(n):
                rate, lat = _our_batch(s, url, tenant, [next(projects) for _ in range(n)])
            our_rates.append(rate)
            load_latencies.extend(lat)

        profiled: dict[str, object] | None = None
        if profile:
            # A run of its own: sampling slows the worker, so its rate is not one of the ratio's.
            with sampled(s.pid("worker"), PROFILE_FILE):
                rate, _lat = _our_batch(s, url, tenant, [next(projects) for _ in range(n)])
            profiled = {**summarize(PROFILE_FILE), "deployments_per_s_while_sampled": round(rate, 1)}

        bare_lat, our_lat = [], []
        one_at_a_time_ids = []
        with requests.Session() as session:
            for _ in range(sequential):
                bare_lat.append(_bare_one(bare, r))
                deployment_id, latency = _our_one(s, session, url, tenant, next(projects))
                one_at_a_time_ids.append(deployment_id)
                our_lat.append(latency)
        timeline = _step_timeline(s, one_at_a_time_ids)

        default_cap_rate = None
        if not quick:
            s.stop("worker")
            s.start_worker("worker", "tasks", pool, env={"MAX_CONCURRENT_DEPLOYMENTS": "5"})
            batch = [next(projects) for _ in range(DEFAULT_CAP_BATCH)]
            default_cap_rate, _lat = _our_batch(s, url, tenant, batch)

    rate, bare_rate = median(our_rates), median(bare_rates)
    p50, bare_p50 = percentile(our_lat, 50), percentile(bare_lat, 50)
    ratio = rate / bare_rate
    met = ratio >= 0.6 and p50 <= 2 * bare_p50
    return Result(
        value=rounded(rate, 1),
        baseline=rounded(bare_rate, 1),
        ratio=rounded(ratio),
        unit="deployments/s",
        target=">= 0.6 x bare chains/s; POST-to-completed p50 <= 2 x bare chain",
        met=met,
        details={
            "pool": f"{pool} 5",
            "deployments_per_run": n,
            "runs_deployments_per_s": [round(x, 1) for x in our_rates],
            "runs_bare_chains_per_s": [round(x, 1) for x in bare_rates],
            "cpu_ms_per_deployment": our_cpu.ms_per_unit(),
            "cpu_ms_per_bare_chain": bare_cpu.ms_per_unit(),
            "redis_commands_per_deployment": our_commands.per_unit(),
            "redis_commands_per_bare_chain": bare_commands.per_unit(),
            "one_at_a_time": sequential,
            "post_to_completed_p50_ms": round(p50 * 1000, 1),
            "post_to_completed_p95_ms": round(percentile(our_lat, 95) * 1000, 1),
            "bare_chain_p50_ms": round(bare_p50 * 1000, 1),
            "bare_chain_p95_ms": round(percentile(bare_lat, 95) * 1000, 1),
            "latency_ratio_p50": round(p50 / bare_p50, 2),
            "one_at_a_time_step_timeline_ms": timeline,
            "under_load_post_to_completed_p50_ms": round(percentile(load_latencies, 50) * 1000, 1),
            "under_load_post_to_completed_p95_ms": round(percentile(load_latencies, 95) * 1000, 1),
            "slot_cap": n,
            "default_cap_5_deployments_per_s": rounded(default_cap_rate, 2),
            "default_cap_batch": DEFAULT_CAP_BATCH,
            **({"worker_profile": profiled} if profiled is not None else {}),
        },
    )
