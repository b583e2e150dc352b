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
