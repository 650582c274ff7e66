"""What the platform costs per epoch: the project's training path on Ray Train (1 worker,
MLflow logging on, checkpoint every epoch) against a plain PyTorch loop over the same model,
data, batch size and augmentation, paired and interleaved (benchmarks/paired.py).

    python benchmarks/train_overhead.py            # 5 rounds of 4 epochs a side
    python benchmarks/train_overhead.py --quick    # 4 rounds of 2 epochs a side

Each round trains once on each side, the order flipping every round; a side's figure for the
round is its median epoch after the first (both sides warm up: allocator, kernels). The ratio
is the median of the rounds' ratios, with their min and max. Ray's fixed start-up (the worker
group; the local cluster is started once) and the driver's post-training work (test
evaluation, figures, model logging) are reported apart: they do not grow with the data.
Last line: one JSON object (goal: ratio <= 1.10), also appended to results/bench.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
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
from benchmarks.paired import paired, record


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 rounds of 2 epochs")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="epochs a side each round")
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 5)
    epochs = args.epochs or (2 if args.quick else 4)
    fixed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/bench.db")
        torch.set_num_threads(1)  # the Ray worker gets 1 CPU: give the baseline the same
        splits = load_splits("digits")
        names = itertools.count()

        def config() -> TrainConfig:
            return TrainConfig(
                model=args.model, epochs=epochs, num_workers=1, cpus_per_worker=1,
                batch_size=64, lr_schedule="constant", experiment="bench-train-overhead",
                run_name=f"round-{next(names)}", storage_path=f"{tmp}/ray_results",
            )  # fmt: skip

        def project() -> float:
            times, wall = project_epochs(config(), splits)
            fixed.append(wall - sum(times))
            return statistics.median(times[1:])

        def plain() -> float:
            return statistics.median(plain_epochs(config(), splits, torch.device("cpu"))[1:])

        result = paired(project, plain, rounds)
    summary = result.summary()
    fixed_s = statistics.median(fixed)
    print(f"project epoch {summary['a_median']:.2f}s, plain epoch {summary['b_median']:.2f}s, "
          f"ratio {summary['ratio']:.3f} (min {summary['ratio_min']:.3f}, "
          f"max {summary['ratio_max']:.3f}); fixed cost {fixed_s:.1f}s")  # fmt: skip
    print(
        record(
            {
                "bench": "train_overhead",
                "model": args.model,
                "dataset": "digits",
                "epochs": epochs,
                "goal": "<= 1.10",
                **summary,
                "fixed_overhead_s": round(fixed_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
