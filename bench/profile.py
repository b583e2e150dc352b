"""Where a worker's time goes: py-spy samples of its processes during a run, sorted by what they did.

``python -m bench pipeline --profile`` samples the Celery worker (every prefork child) with
``py-spy record --subprocesses --nonblocking`` during one of the throughput runs, keeps the raw
stacks in ``bench/results/pipeline-worker.pyspy`` (one collapsed stack and its count per line: load
it into speedscope or flamegraph.pl) and adds the share of each category below to the details.

py-spy counts the threads it finds running, not idle ones; a thread inside psycopg waiting for
PostgreSQL's answer counts as running, so "waiting on PostgreSQL" includes the round trips.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.stack import BIN

PY_SPY = BIN / "py-spy"
SAMPLES_PER_S = 200


@contextmanager
def sampled(pid: int, out: Path) -> Iterator[None]:
    """Sample process ``pid`` and its children into ``out`` while the block runs."""
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--subprocesses", "--nonblocking", "--format", "raw",
         "-r", str(SAMPLES_PER_S), "-o", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches to every child before the work starts
    if spy.poll() is not None:
        raise RuntimeError(f"py-spy could not sample pid {pid}: {_stderr(spy)}")
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no samples: {_stderr(spy)}")


def _stderr(spy: subprocess.Popen[bytes]) -> str:
    assert spy.stderr is not None
    return spy.stderr.read().decode(errors="replace").strip()[-500:]


def category(frames: list[str]) -> str:
    """What a sampled stack (outermost frame first) was doing."""
    leaf = frames[-1] if frames else ""
    if any(frame.startswith("execute (libra_deploy/steps/") for frame in frames):
        return "steps' own work (execute)"
    if any(frame.startswith("run_step (libra_deploy/steps/runner.py") for frame in frames):
        # The transactions that record a step (and their commits, made as run_step's blocks end).
        if "psycopg/" in leaf:
            return "step records: psycopg (sending, and waiting on PostgreSQL)"
        if "sqlalchemy/" in leaf:
            return "step records: SQLAlchemy (ORM loading, flushing, statements)"
        return "step records: the runner's own logic"
    if any("libra_deploy/steps/monitor.py" in frame for frame in frames):
        return "step monitor thread (heartbeats, cancels)"
    if any(frame.startswith(("trace_task (", "build_tracer.")) for frame in frames):
        return "Celery: the task's trace (next task's publish, task events)"
    return "Celery: the worker's main loop (receiving, acks, the pool)"


def summarize(path: Path) -> dict[str, object]:
    """{"samples": N, "shares_percent": {category: percent}} of a py-spy raw file."""
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        counts[category(frames)] += int(count)
    total = sum(counts.values()) or 1
    shares = {name: round(100 * n / total, 1) for name, n in counts.most_common()}
    return {"samples": sum(counts.values()), "file": str(path), "shares_percent": shares}
