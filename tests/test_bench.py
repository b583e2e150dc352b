"""The benchmarks' results file and table have the shape issue 7 asks for (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import NAMES
from bench.common import Result, percentile, table, write_results


def _result(met: bool) -> Result:
    return Result(
        value=12.5,
        baseline=20.0,
        ratio=0.625,
        unit="deployments/s",
        target=">= 0.6 x bare",
        met=met,
        details={"runs": [12.0, 13.0]},
    )


def test_latest_json_has_the_issue_shape(tmp_path):
    results = {"pipeline": _result(True), "memory": _result(False)}

    path = write_results(results, quick=True, directory=tmp_path)

    latest = json.loads(path.read_text())
    assert set(latest) == {"commit", "date", "quick", "benchmarks"}
    assert latest["quick"] is True
    assert latest["commit"]
    assert set(latest["benchmarks"]) == {"pipeline", "memory"}
    assert latest["benchmarks"]["pipeline"] == {
        "value": 12.5,
        "baseline": 20.0,
        "ratio": 0.625,
        "unit": "deployments/s",
        "target": ">= 0.6 x bare",
        "met": True,
    }
    details = json.loads((tmp_path / "details.json").read_text())
    assert details["benchmarks"]["pipeline"] == {"runs": [12.0, 13.0]}


def test_the_table_has_a_row_per_benchmark_and_says_which_missed():
    shown = table({"pipeline": _result(True), "memory": _result(False)}).splitlines()

    assert shown[0].startswith("| benchmark | value | baseline | ratio |")
    assert shown[2] == "| pipeline | 12.5 | 20 | 0.625 | deployments/s | >= 0.6 x bare | yes |"
    assert shown[3].endswith("| NO |")


def test_every_benchmark_of_the_issue_has_a_module_with_run():
    import importlib

    assert set(NAMES) == {"pipeline", "api", "live", "redeploy", "status", "memory"}
    for name in NAMES:
        assert callable(importlib.import_module(f"bench.{name}").run)


@pytest.mark.parametrize(("p", "expected"), [(50, 3), (95, 5), (99, 5), (0, 1), (20, 1), (21, 2)])
def test_percentile_is_nearest_rank(p, expected):
    assert percentile([5, 1, 4, 2, 3], p) == expected


def test_a_worker_profile_is_sorted_by_what_each_sample_was_doing(tmp_path):
    from bench.profile import summarize

    task = 'process 1:"celery worker";trace_task (celery/app/trace.py:1)'
    run_step = f"{task};run_step (libra_deploy/steps/runner.py:9)"
    raw = tmp_path / "worker.pyspy"
    raw.write_text(
        f"{run_step};_begin (libra_deploy/steps/runner.py:2);wait (psycopg/connection.py:495) 6\n"
        f"{run_step};__exit__ (contextlib.py:1);commit (sqlalchemy/orm/session.py:3) 2\n"
        f"{run_step};execute (libra_deploy/steps/sync.py:20);read_bytes (pathlib.py:1) 1\n"
        f"{task};send_task (celery/app/base.py:1) 1\n"
    )

    summary = summarize(raw)

    assert summary["samples"] == 10
    assert summary["shares_percent"] == {
        "step records: psycopg (sending, and waiting on PostgreSQL)": 60.0,
        "step records: SQLAlchemy (ORM loading, flushing, statements)": 20.0,
        "steps' own work (execute)": 10.0,
        "Celery: the task's trace (next task's publish, task events)": 10.0,
    }


@pytest.mark.parametrize(
    ("argv", "says"),
    [(["pipelin"], "unknown benchmark pipelin"), (["status", "--profile"], "--profile: none of these")],
)
def test_a_wrong_command_line_is_refused_before_anything_starts(argv, says, capsys):
    from bench.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)

    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_the_cpu_split_counts_a_process_tree_and_a_command_name(tmp_path):
    """The pipeline's CPU per process group (bench/cpu.py): a grandchild's CPU counts for the tree
    under the pid it was started from, and for its command name."""
    import os
    import signal
    import subprocess
    import sys

    from bench.cpu import CpuMeter

    burner = tmp_path / "cpuburner"  # its command name in /proc
    burner.symlink_to(sys.executable)
    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    burn += "print('burnt', flush=True)\ntime.sleep(60)"
    launch = "import subprocess, sys; subprocess.run(sys.argv[1:])"
    launcher = subprocess.Popen(
        [sys.executable, "-c", launch, str(burner), "-c", burn],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    meter = CpuMeter({"tree": launcher.pid}, {"by name": "cpuburner", "nobody": "no-such-command"})
    try:
        with meter.batch(units=1):
            assert launcher.stdout is not None
            assert launcher.stdout.readline() == "burnt\n"
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()

    used = meter.ms_per_unit()
    # 600 ms burnt; the first reading may come after the burner's first few milliseconds.
    assert used["by name"] >= 300
    assert used["tree"] >= used["by name"]
    assert used["nobody"] == 0


def test_the_redis_commands_of_a_batch_are_counted_per_unit_without_the_meters_own():
    """The pipeline's commands per unit on each side (bench/redis_commands.py). Redis counts every
    client's commands, so the bounds are lower ones: another client may be busy at the same time."""
    import uuid

    import redis

    from bench.redis_commands import CommandMeter
    from tests.conftest import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    key = f"libra-test-meter-{uuid.uuid4().hex}"
    meter = CommandMeter(client, not_counted=frozenset({"get"}))
    try:
        for _ in range(2):
            with meter.batch(units=5):
                for unit in range(5):
                    client.set(key, unit)
                    client.incrby(key, 1)
                    client.get(key)
    finally:
        client.delete(key)

    counted = meter.per_unit()
    assert counted["by_command"]["set"] >= 1
    assert counted["by_command"]["incrby"] >= 1
    assert "get" not in counted["by_command"]
    assert "info" not in counted["by_command"]
    assert counted["total"] >= 2
