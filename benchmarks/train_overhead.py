"""What the platform costs per epoch: the project's training path on Ray Train (1 worker,
MLflow logging on, checkpoint every epoch) against a plain PyTorch loop over the same model,
data, batch size and augmentation, in the same run.

    python benchmarks/train_overhead.py            # digits, resnet18, 6 epochs
    python benchmarks/train_overhead.py --quick    # 3 epochs

Epoch time is compared after the first epoch (both sides warm up: allocator, kernels). Ray's
fixed start-up (cluster, worker group) and the driver's post-training work (test evaluation,
figures, model logging) are reported apart: they do not grow with the data.
Last line: one JSON object with the figures and the ratio (goal: ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from app.datasets import ImageSplits, load_splits
from app.train.config import TrainConfig
from benchmarks.baselines import plain_epochs


def project_epochs(cfg: TrainConfig, splits: ImageSplits) -> tuple[list[float], float]:
    """The real path (app.train.driver.fit on Ray Train); epoch times as workers measured them."""
    from mlflow.tracking import MlflowClient

    from app import tracking
    from app.train.driver import fit

    started = time.perf_counter()
    outcome = fit(cfg, splits)
    wall = time.perf_counter() - started
    history = MlflowClient(tracking.tracking_uri()).get_metric_history(
        outcome.run_id, "epoch_seconds"
    )
    return [m.value for m in sorted(history, key=lambda m: m.step)], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 6")
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    epochs = 3 if args.quick else 6
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/bench.db")
        torch.set_num_threads(1)  # the Ray worker gets 1 CPU: give the baseline the same
        cfg = TrainConfig(
            model=args.model, epochs=epochs, num_workers=1, cpus_per_worker=1, batch_size=64,
            lr_schedule="constant", experiment="bench-train-overhead",
            storage_path=f"{tmp}/ray_results",
        )  # fmt: skip
        splits = load_splits("digits")
        baseline = plain_epochs(cfg, splits, torch.device("cpu"))
        project, wall = project_epochs(cfg, splits)
    baseline_epoch = statistics.median(baseline[1:])
    project_epoch = statistics.median(project[1:])
    fixed = wall - sum(project)
    print(f"plain loop   epoch {baseline_epoch:.2f}s  (all: {[round(t, 2) for t in baseline]})")
    print(f"project path epoch {project_epoch:.2f}s  (all: {[round(t, 2) for t in project]})")
    print(f"fixed cost (Ray start, worker group, test eval, model logging): {fixed:.1f}s")
    print(
        json.dumps(
            {
                "bench": "train_overhead",
                "model": args.model,
                "dataset": "digits",
                "epochs": epochs,
                "project_epoch_s": round(project_epoch, 3),
                "baseline_epoch_s": round(baseline_epoch, 3),
                "fixed_overhead_s": round(fixed, 1),
                "ratio": round(project_epoch / baseline_epoch, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
