"""What a sweep costs beyond its training, and what ASHA buys.

1. Overhead: a sweep's wall time over the sum of its trials' pure training time (the epoch
   times the workers measured). Goal on 2 CPU cores: <= 1.5.
2. ASHA: the same seeded random search run twice, every trial to the end (FIFO) and with
   ASHA; the time ASHA needs to first reach the best accuracy of the full run, against the full
   run's wall time. Goal: ASHA at least 2x faster.

    python benchmarks/tune_overhead.py            # 8 trials x 8 epochs, 2 at a time
    python benchmarks/tune_overhead.py --quick    # 4 trials x 3 epochs
    python benchmarks/tune_overhead.py --trials 8 --epochs 4
    python benchmarks/tune_overhead.py --overhead-rounds 2 --trials 2 --epochs 3   # make bench

The overhead's two sides (wall time, the trials' epoch times) come from the same sweep, so a
drift of the machine lands on both. ``--overhead-rounds N`` measures only the overhead, in N
sweeps: their median ratio with its min and max (benchmarks/paired.py's summary).

Each trial starts a TorchTrainer (controller and worker processes): on 2 cores that costs about
30 s a trial whatever its length, which ASHA cannot save, so short trials understate it.

Last line: one JSON object with the figures and the ratios, also appended to
results/bench.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import tracking
from app.tune.config import TuneConfig
from app.tune.sweep import run_sweep
from benchmarks.paired import Paired, record


def sweep(tmp: str, name: str, scheduler: str, samples: int, epochs: int) -> dict[str, Any]:
    cfg = TuneConfig(
        dataset="digits", model="resnet18", epochs=epochs, num_samples=samples,
        max_concurrent=2, scheduler=scheduler, search="random", seed=7,
        experiment=f"bench-{name}", run_name=name, storage_path=f"{tmp}/ray_results",
    )  # fmt: skip
    summary = run_sweep(cfg)
    client = tracking.client()
    parent = client.get_run(summary["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    training = 0.0
    points = []  # (seconds since the sweep started, val_accuracy)
    for run in children:
        training += sum(
            m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")
        )
        points += [
            ((m.timestamp - parent.info.start_time) / 1000, m.value)
            for m in client.get_metric_history(run.info.run_id, "val_accuracy")
        ]
    return {"wall": summary["wall_seconds"], "training": training, "points": sorted(points)}


def overhead_rounds(tmp: str, rounds: int, samples: int, epochs: int) -> dict[str, Any]:
    """The overhead alone, in ``rounds`` sweeps of every trial to the end."""
    walls, trainings = [], []
    for i in range(rounds):
        measured = sweep(tmp, f"overhead-{i}", "none", samples, epochs)
        walls.append(measured["wall"])
        trainings.append(measured["training"])
        print(f"round {i + 1}/{rounds}: wall {walls[-1]:.0f}s, training {trainings[-1]:.0f}s, "
              f"ratio {walls[-1] / trainings[-1]:.3f}", flush=True)  # fmt: skip
    return {
        "bench": "tune_overhead",
        "trials": samples,
        "epochs": epochs,
        "goal": "<= 1.5",
        **Paired(walls, trainings).summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 trials x 3 epochs")
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of a full trial")
    parser.add_argument(
        "--overhead-rounds", type=int, default=0, help="only the overhead, in this many sweeps"
    )
    args = parser.parse_args()
    samples, epochs = (4, 3) if args.quick else (args.trials, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/bench.db")
        if args.overhead_rounds:
            print(record(overhead_rounds(tmp, args.overhead_rounds, samples, epochs)))
            return
        full = sweep(tmp, "full", "none", samples, epochs)
        asha = sweep(tmp, "asha", "asha", samples, epochs)
    target = max(accuracy for _, accuracy in full["points"])
    reached = next((t for t, accuracy in asha["points"] if accuracy >= target), None)
    asha_time = reached if reached is not None else asha["wall"]
    overhead = full["wall"] / full["training"]
    print(f"full sweep: wall {full['wall']:.0f}s, training {full['training']:.0f}s")
    print(f"ASHA sweep: wall {asha['wall']:.0f}s, reached {target:.4f} at "
          f"{'never' if reached is None else f'{reached:.0f}s'}")  # fmt: skip
    print(
        record(
            {
                "bench": "tune_overhead",
                "trials": samples,
                "epochs": epochs,
                "sweep_wall_s": round(full["wall"], 1),
                "trial_training_s": round(full["training"], 1),
                "overhead_ratio": round(overhead, 3),
                "target_val_accuracy": round(target, 4),
                "asha_time_to_target_s": round(asha_time, 1),
                "asha_reached_target": reached is not None,
                "full_wall_s": round(full["wall"], 1),
                "asha_speedup": round(full["wall"] / asha_time, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
