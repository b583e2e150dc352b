"""GET /deploy-status on a big database against a primary-key select of one row.

The database gets 1,000,000 deployments (100,000 with --quick), six step rows each, and 20 log
lines each for the most recent 10,000, bulk-loaded with generate_series; 1,000 organisations with a
token each and 10,000 projects, so that every table is big enough for the planner to prefer its
indexes when it should. Requests ask for the status of recent deployments of one organisation
(what clients poll). Baseline: the bare Flask app under the same gunicorn selecting one deployment
row by primary key. Light load (wrk, 4 connections, 5 ms pause between requests), interleaved
A B A B, medians of the p99s.

It prints the EXPLAIN ANALYZE of every query GET /deploy-status runs (captured from a real request),
and of the sandbox-slot queries each deployment runs, which a big table makes expensive too.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench import wrk
from bench.common import Result, interleave, median, rounded
from bench.stack import Stack, stack

NAME = "status"
ORGS = 1000
PROJECTS = 10_000
RECENT = 10_000
TOKEN_PREFIX = "ldt_bench_"

STEPS = "('validate', 0), ('sync', 1), ('sandbox', 2), ('build', 3), ('deploy', 4), ('cleanup', 5)"


def _org(expr: str) -> str:
    # Every tenth project belongs to organisation 1, whose token the benchmark uses.
    chosen = f"CASE WHEN ({expr}) % 10 = 0 THEN 1 ELSE ({expr}) % {ORGS} + 1 END"
    return f"'org_' || substr(md5('o' || ({chosen})), 1, 26)"


def statements(rows: int) -> list[str]:
    """The bulk load, in order (every value comes from this module's constants)."""
    return [
        f"""INSERT INTO organizations (id, name, plan, created_at)
        SELECT 'org_' || substr(md5('o' || i), 1, 26), 'org ' || i, 'free', now()
        FROM generate_series(1, {ORGS}) AS i""",
        f"""INSERT INTO users (id, org_id, email, created_at)
        SELECT 'usr_' || substr(md5('u' || i), 1, 26), 'org_' || substr(md5('o' || i), 1, 26),
               'user' || i || '@example.io', now()
        FROM generate_series(1, {ORGS}) AS i""",
        f"""INSERT INTO api_tokens (id, org_id, user_id, token_hash, name, created_at)
        SELECT 'tok_' || substr(md5('t' || i), 1, 26), 'org_' || substr(md5('o' || i), 1, 26),
               'usr_' || substr(md5('u' || i), 1, 26),
               encode(sha256(convert_to('{TOKEN_PREFIX}' || i, 'UTF8')), 'hex'), '', now()
        FROM generate_series(1, {ORGS}) AS i""",
        f"""INSERT INTO projects (id, org_id, name, is_active, deployment_status, source_manifest,
                              spa_fallback, created_at, updated_at)
        SELECT 'prj_' || substr(md5('p' || j), 1, 26), {_org("j")}, 'site ' || j, true, 'deployed',
               '{{}}', true, now(), now()
        FROM generate_series(1, {PROJECTS}) AS j""",
        f"""INSERT INTO deployments (id, project_id, org_id, status, progress, request, history_messages,
                                 created_at, started_at, finished_at, pinned, updated_at, url)
        SELECT 'dep_' || substr(md5('d' || i) || md5('e' || i), 1, 26),
               'prj_' || substr(md5('p' || (i % {PROJECTS} + 1)), 1, 26), {_org(f"i % {PROJECTS} + 1")},
               'completed', 100, '{{}}', '[]', at, at, at + interval '20 seconds', false, at,
               'http://127.0.0.1/sites/x/'
        FROM generate_series(1, {rows}) AS i,
             LATERAL (SELECT now() - ({rows} - i) * interval '1 second' AS at) AS t""",
        f"""INSERT INTO deployment_steps (deployment_id, step, position, status, attempts,
                                      started_at, finished_at)
        SELECT d.id, s.step, s.position, 'completed', 1, d.started_at, d.finished_at
        FROM deployments AS d CROSS JOIN (VALUES {STEPS}) AS s (step, position)""",
        f"""INSERT INTO deployment_logs (deployment_id, step, level, message, created_at)
        SELECT d.id, 'build', 'info', 'build output line ' || k || ': compiled 42 modules', d.created_at
        FROM (SELECT id, created_at FROM deployments ORDER BY created_at DESC LIMIT {RECENT}) AS d
        CROSS JOIN generate_series(1, 20) AS k""",
    ]


def load(s: Stack, rows: int) -> float:
    started = time.monotonic()
    for statement in statements(rows):
        s.sql(statement)
    s.sql("VACUUM ANALYZE")
    return time.monotonic() - started


def recent_ids(s: Stack) -> list[str]:
    return [
        r[0]
        for r in s.sql(
            f"SELECT id FROM (SELECT id, org_id FROM deployments ORDER BY created_at DESC LIMIT {RECENT}) d "
            "WHERE org_id = 'org_' || substr(md5('o1'), 1, 26)"
        )
    ]


def explain(s: Stack, deployment_id: str, token: str) -> list[dict[str, Any]]:
    """Run one real GET /deploy-status in this process, capture its SQL, EXPLAIN ANALYZE each."""
    from sqlalchemy import event, text

    from libra_deploy.config import Settings
    from libra_deploy.runtime import Runtime
    from web import create_app

    runtime = Runtime.from_settings(Settings.from_env(s.env))
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    try:
        client = create_app(runtime).test_client()
        event.listen(runtime.engine, "before_cursor_execute", capture)
        response = client.get(
            f"/deploy-status?id={deployment_id}", headers={"Authorization": f"Bearer {token}"}
        )
        event.remove(runtime.engine, "before_cursor_execute", capture)
        if response.status_code != 200:
            raise RuntimeError(f"GET /deploy-status answered {response.status_code}: {response.text[:200]}")
        plans = []
        with runtime.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            for statement, parameters in captured:
                cursor = raw.cursor()
                cursor.execute("EXPLAIN ANALYZE " + statement, parameters)
                plans.append(
                    {"query": " ".join(statement.split()), "plan": [r[0] for r in cursor.fetchall()]}
                )
            for name, statement in SLOT_QUERIES.items():
                plan = [r[0] for r in conn.execute(text("EXPLAIN ANALYZE " + statement))]
                plans.append({"query": name, "plan": plan})
        return plans
    finally:
        runtime.close()


#: What slots.try_acquire asks on every sandbox step (the same predicates, written out).
SLOT_QUERIES = {
    "slots held (slots.try_acquire)": "SELECT count(*) FROM deployments "
    "WHERE slot_acquired_at IS NOT NULL AND slot_released_at IS NULL",
    "slots asked before (slots.try_acquire)": "SELECT count(*) FROM deployments "
    "WHERE status IN ('queued', 'in_progress') AND slot_acquired_at IS NULL AND slot_requested_at < now()",
}


def run(quick: bool) -> Result:
    # Five pairs at full size: a p99 of 8 s of light load moves by a few ms from one pair to the next.
    rows, seconds, runs = (100_000, 4, 2) if quick else (1_000_000, 8, 5)
    with stack("status") as s:
        loaded_s = load(s, rows)
        ours = s.start_web(name="web")
        bare = s.start_web("bench.bare_flask:create_app()", name="bare")
        ids = recent_ids(s)
        token = f"{TOKEN_PREFIX}1"

        def measure(url: str, path: str) -> wrk.Load:
            return wrk.run(
                url, method="GET", path=path, items=ids, token=token, seconds=seconds,
                connections=4, pause_ms=5,
            )  # fmt: skip

        measure(ours, "/deploy-status?id={item}")
        measure(bare, "/row?id={item}")
        bare_runs, our_runs = interleave(
            runs, lambda: measure(bare, "/row?id={item}"), lambda: measure(ours, "/deploy-status?id={item}")
        )
        plans = explain(s, ids[0], token)

    for plan in plans:
        print(f"\n-- {plan['query']}", file=sys.stderr)
        print("\n".join(plan["plan"]), file=sys.stderr)
    status_plans = [p for p in plans if not p["query"].endswith("(slots.try_acquire)")]
    seq_scans = [p["query"][:80] for p in status_plans if any("Seq Scan" in line for line in p["plan"])]
    errors = sum(r.status_errors + r.socket_errors for r in bare_runs + our_runs)
    p99, bare_p99 = median([r.p99_ms for r in our_runs]), median([r.p99_ms for r in bare_runs])
    ratio = p99 / bare_p99
    return Result(
        value=rounded(p99, 2),
        baseline=rounded(bare_p99, 2),
        ratio=rounded(ratio),
        unit="ms p99",
        target="p99 <= 2 x primary-key select; no seq scan",
        met=ratio <= 2 and not seq_scans and errors == 0,
        details={
            "deployments": rows,
            "load_seconds": round(loaded_s),
            "p50_ms": round(median([r.p50_ms for r in our_runs]), 2),
            "bare_p50_ms": round(median([r.p50_ms for r in bare_runs]), 2),
            "runs_p99_ms": [round(r.p99_ms, 2) for r in our_runs],
            "runs_bare_p99_ms": [round(r.p99_ms, 2) for r in bare_runs],
            "errors": errors,
            "seq_scans_in_status_queries": seq_scans,
            "plans": plans,
        },
    )
