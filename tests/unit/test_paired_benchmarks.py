"""The benchmarks' instrument: sides interleaved with the order flipping, the ratio a median of
paired ratios with its spread, the figures of one `make bench` run found again by its id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.paired import RUN_ENV, markdown, paired, record, table


def test_sides_alternate_and_the_order_flips_every_round() -> None:
    calls: list[str] = []
    a_values = iter([10.0, 12.0, 30.0, 11.0])  # round 3: a slow spell on A
    b_values = iter([5.0, 6.0, 5.0, 5.5])

    def side(name: str, values: Iterator[float]) -> float:
        calls.append(name)
        return next(values)

    result = paired(lambda: side("A", a_values), lambda: side("B", b_values), 4, log=calls.append)
    order = [c for c in calls if c in ("A", "B")]
    assert order == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert result.ratios == [2.0, 2.0, 6.0, 2.0]
    summary = result.summary()
    # The median ignores the one disturbed round; the spread shows it.
    assert (summary["ratio"], summary["ratio_min"], summary["ratio_max"]) == (2.0, 2.0, 6.0)
    assert summary["rounds"] == 4
    assert sum(line.startswith("round ") for line in calls) == 4


def test_at_least_one_round() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        paired(lambda: 1.0, lambda: 1.0, 0)


def test_a_run_table_shows_that_runs_ratios_and_what_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "bench.jsonl"
    figures = {"ratio": 1.05, "ratio_min": 1.01, "ratio_max": 1.09, "rounds": 4}
    monkeypatch.setenv(RUN_ENV, "old")
    record({"bench": "train_overhead", **figures, "ratio": 1.5}, results)
    monkeypatch.setenv(RUN_ENV, "new")
    line = record({"bench": "train_overhead", **figures}, results)
    assert json.loads(line)["run"] == "new"
    text = table("new", results)
    row = next(r for r in text.splitlines() if r.startswith("training"))
    assert row.split()[-6:] == ["1.050", "1.010", "1.090", "4", "<=", "1.10"]
    assert "1.500" not in text  # another run's figure
    assert "(not run)" in next(r for r in text.splitlines() if r.startswith("bulk scoring"))


def test_runs_side_by_side_as_benchmarks_md_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "bench.jsonl"
    for run, ratio in (("r1", 0.95), ("r2", 0.97)):
        monkeypatch.setenv(RUN_ENV, run)
        figures = {"ratio": ratio, "ratio_min": ratio - 0.02, "ratio_max": ratio + 0.02}
        record({"bench": "batch_predict", **figures, "rounds": 2}, results)
    rows = markdown(["r1", "r2"], results).splitlines()
    assert rows[0] == "| ratio | goal | `make bench` r1 | `make bench` r2 |"
    bulk = next(r for r in rows if r.startswith("| bulk scoring"))
    assert bulk.endswith(
        "| >= 0.8 | **0.950** (0.930-0.970, 2 rounds) | **0.970** (0.950-0.990, 2 rounds) |"
    )
    assert "| not run | not run |" in next(r for r in rows if r.startswith("| training"))
