"""Paired, interleaved measurement: the way every ratio of BENCHMARKS.md is taken.

A shared machine drifts by tens of percent within minutes, so a ratio of two sides measured one
after the other measures the drift too. Here the two sides alternate in rounds, the order
flipping each round (A B, B A, A B, ...), so a slow spell lands on both sides of some pair and
a steady drift cancels within each pair of rounds. Each round gives one ratio; the figure is the
median of those ratios, reported with their min and max.

    python benchmarks/paired.py --self-check   # the instrument: the same loop against itself
    python benchmarks/paired.py --table RUN    # the figures one `make bench` (BENCH_RUN=RUN) wrote
    python benchmarks/paired.py --markdown RUN1 RUN2 RUN3   # those runs as BENCHMARKS.md's table

The self-check times one epoch of the plain PyTorch training loop (benchmarks/baselines.py)
against the same epoch, paired as above: what ratio spread this machine allows when there is
no difference to find. Last line: one JSON object, also appended to results/bench.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "bench.jsonl"


@dataclass(frozen=True)
class Paired:
    """Rounds of A and B; ``a[i]`` and ``b[i]`` were measured next to each other."""

    a: list[float]
    b: list[float]

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def summary(self, digits: int = 3) -> dict[str, Any]:
        ratios = self.ratios
        return {
            "ratio": round(self.ratio, digits),
            "ratio_min": round(min(ratios), digits),
            "ratio_max": round(max(ratios), digits),
            "rounds": len(ratios),
            "a_median": round(statistics.median(self.a), digits),
            "b_median": round(statistics.median(self.b), digits),
            "ratios": [round(r, digits) for r in ratios],
        }


def paired(
    measure_a: Callable[[], float],
    measure_b: Callable[[], float],
    rounds: int,
    log: Callable[[str], None] = print,
) -> Paired:
    """``rounds`` measurements of each side, interleaved A B, B A, A B, ..."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            a.append(measure_a())
            b.append(measure_b())
        else:
            b.append(measure_b())
            a.append(measure_a())
        log(f"round {i + 1}/{rounds}: A {a[-1]:.4g}  B {b[-1]:.4g}  A/B {a[-1] / b[-1]:.3f}")
    return Paired(a, b)


RUN_ENV = "BENCH_RUN"  # set by `make bench`: which invocation a line belongs to


def record(figures: dict[str, Any], results: Path = RESULTS) -> str:
    """One JSON line, appended to ``results`` and returned (benchmarks print it last)."""
    run = os.environ.get(RUN_ENV)
    line = json.dumps({**figures, **({"run": run} if run else {})})
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as out:
        out.write(line + "\n")
    return line


def self_check(rounds: int) -> dict[str, Any]:
    """One epoch of the plain loop against the same epoch: the instrument's own resolution."""
    import torch

    from app.datasets import load_splits
    from app.train.config import TrainConfig
    from benchmarks.baselines import plain_epochs

    torch.set_num_threads(1)  # as train_overhead.py measures: one worker, one CPU
    splits = load_splits("digits")
    cfg = TrainConfig(model="resnet18", epochs=1, batch_size=64, lr_schedule="constant")
    plain_epochs(cfg, splits, torch.device("cpu"))  # warm-up: allocator, kernels

    def epoch() -> float:
        return plain_epochs(cfg, splits, torch.device("cpu"))[0]

    result = paired(epoch, epoch, rounds)
    return {"bench": "self_check", "what": "plain loop epoch vs itself", **result.summary()}


# Every ratio `make bench` reports: (bench, key of the ratio, what it compares, goal).
RATIOS = (
    ("self_check", "ratio", "the instrument: plain epoch / the same epoch", "1.00 +- 0.02"),
    ("train_overhead", "ratio", "training: project epoch / plain epoch", "<= 1.10"),
    ("serve_load", "ratio", "serving: served / bare forward images/s", ">= 0.5"),
    ("serve_load", "batching_ratio", "serving: batching on / off images/s", ">= 2"),
    ("batch_predict", "ratio", "bulk scoring: pipeline / bare loop images/s", ">= 0.8"),
    ("tune_overhead", "ratio", "sweeps: wall time / the trials' epoch time", "<= 1.5"),
)


def _runs(results: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """run id -> bench -> its latest figures."""
    lines = results.read_text().splitlines() if results.exists() else []
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for row in (json.loads(line) for line in lines if line.strip()):
        if row.get("run"):
            runs.setdefault(row["run"], {})[row["bench"]] = row
    return runs


def table(run: str, results: Path = RESULTS) -> str:
    """The ratios one run wrote, one row each: median, min, max, rounds, goal."""
    latest = _runs(results).get(run, {})
    out = [f"{'ratio':<52} {'median':>7} {'min':>7} {'max':>7} {'rounds':>6}  goal"]
    for bench, key, what, goal in RATIOS:
        row = latest.get(bench)
        if row is None:
            out.append(f"{what:<52} {'(not run)':>7}")
            continue
        out.append(
            f"{what:<52} {row[key]:>7.3f} {row[key + '_min']:>7.3f} {row[key + '_max']:>7.3f} "
            f"{row['rounds']:>6}  {goal}"
        )
    return "\n".join(out)


def markdown(runs: list[str], results: Path = RESULTS) -> str:
    """BENCHMARKS.md's table of several runs: each ratio's median (min-max) per run."""
    recorded = _runs(results)
    out = [
        "| ratio | goal | " + " | ".join(f"`make bench` {run}" for run in runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for bench, key, what, goal in RATIOS:
        cells = []
        for run in runs:
            row = recorded.get(run, {}).get(bench)
            cells.append(
                f"**{row[key]:.3f}** ({row[key + '_min']:.3f}-{row[key + '_max']:.3f}, "
                f"{row['rounds']} rounds)"
                if row
                else "not run"
            )
        out.append(f"| {what} | {goal} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--self-check", action="store_true", help="A against A")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--table", metavar="RUN", help="print the ratios run RUN recorded")
    parser.add_argument("--markdown", metavar="RUN", nargs="+", help="runs as a Markdown table")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
    elif args.markdown:
        print(markdown(args.markdown))
    elif args.self_check:
        print(record(self_check(args.rounds)))
    else:
        parser.error("nothing to do: give --self-check, --table RUN or --markdown RUN...")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
