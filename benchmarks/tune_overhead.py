"""What a sweep costs beyond its training, and what ASHA buys.

1. Overhead: a sweep's wall time over the sum of its trials' pure training time (the epoch
   times the workers measured). Goal on 2 CPU cores: <= 1.5.
2. ASHA: the same seeded random search run twice, every trial to the end (FIFO) and with
   ASHA; the time ASHA needs to first reach the best accuracy of the full run, against the full
   run's wall time. Goal: ASHA at least 2x faster.

    python benchmarks/tune_overhead.py            # 8 trials x 8 epochs, 2 at a time
    python benchmarks/tune_overhead.py --quick    # 4 trials x 3 epochs
    python benchmarks/tune_overhead.py --trials 8 --epochs 4

Each trial starts a TorchTrainer (controller and worker processes): on 2 cores that costs about
30 s a trial whatever its length, which ASHA cannot save, so short trials understate it.

Last line: one JSON object with the figures and both ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import tracking
from app.tune.config import TuneConfig
from app.tune.sweep import run_sweep


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 trials x 3 epochs")
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of a full trial")
    args = parser.parse_args()
    samples, epochs = (4, 3) if args.quick else (args.trials, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/bench.db")
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
        json.dumps(
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
