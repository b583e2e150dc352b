"""What every benchmark shares: its result, statistics, the interleaving of runs, the results file."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    """One line of the results table (and one entry of latest.json's ``benchmarks``)."""

    value: float | None
    baseline: float | None
    ratio: float | None
    unit: str
    target: str
    met: bool
    #: Everything else measured (percentiles, per-run numbers, plans); printed, kept in details.json.
    details: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        shown = asdict(self)
        shown.pop("details")
        return shown


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest-rank, of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def interleave(runs: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Run A B A B ... ``runs`` times each; return both lists of measurements (compare medians)."""
    first: list[float] = []
    second: list[float] = []
    for _ in range(runs):
        first.append(a())
        second.append(b())
    return first, second


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_results(results: dict[str, Result], quick: bool, directory: Path = RESULTS) -> Path:
    """Write ``latest.json`` (the issue's shape) and ``details.json`` beside it; return latest.json."""
    directory.mkdir(parents=True, exist_ok=True)
    head = {"commit": git_commit(), "date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": quick}
    latest = {**head, "benchmarks": {name: r.entry() for name, r in results.items()}}
    details = {**head, "benchmarks": {name: r.details for name, r in results.items()}}
    path = directory / "latest.json"
    path.write_text(json.dumps(latest, indent=2) + "\n")
    (directory / "details.json").write_text(json.dumps(details, indent=2, default=str) + "\n")
    return path


def table(results: dict[str, Result]) -> str:
    """The results as a Markdown table (the same one bench/README.md keeps)."""
    lines = [
        "| benchmark | value | baseline | ratio | unit | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        met = "yes" if r.met else "NO"
        cells = [name, _num(r.value), _num(r.baseline), _num(r.ratio), r.unit, r.target, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
