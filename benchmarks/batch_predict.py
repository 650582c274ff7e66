"""Bulk scoring throughput: jobs/predict.py's Ray Data pipeline against a bare loop of the same
model over the same files, in one run.

    python benchmarks/batch_predict.py            # 10000 CIFAR-sized files, 4 rounds
    python benchmarks/batch_predict.py --quick    # 4000 files, 2 rounds, about 3 minutes
    python benchmarks/batch_predict.py --dataset digits   # the digits as PNG/JPEG, 8x8 model

Writes the files (random 32x32 colour PNG/JPEG for a CIFAR-10-shaped model by default; the
digits through app.datasets.digits_files with ``--dataset digits``), builds an untrained model
(throughput does not depend on the weights) and measures, paired and interleaved (A B, B A, ...)
so that a slow spell of a shared machine hits both alike:

A. the project's path: ``app.batch_predict_pipeline.run_pipeline`` on a private local Ray (the
   actor pool sized as the job sizes it, each actor reading, decoding with bounds and scoring,
   Parquet written), timed from submission to the last file written, actor start-up included;
B. the bare loop: one process reads, decodes (``app.preprocessing.to_model_input``) and calls
   ``Predictor.predict_proba`` on batches of the same size, torch on all cores.

Ratio: pipeline / bare images per second, the median of the paired rounds with their min and
max (benchmarks/paired.py; goal >= 0.8 on CPU). The pipeline pays a
fixed few seconds (actor processes importing torch, the last Parquet write), so the ratio
depends on the job's size: the default is a modest nightly job's. Last line: one JSON object,
also appended to results/bench.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.batch_predict_pipeline import ModelFiles, Resources, ScoringOptions, run_pipeline  # noqa: E402
from app.datasets import dataset_info  # noqa: E402
from app.datasets.digits_files import write_digits_images  # noqa: E402
from app.inference import Predictor, save_model_files  # noqa: E402
from app.models import ModelSpec, build_model, cpu_state_dict  # noqa: E402
from app.preprocessing import to_model_input  # noqa: E402
from benchmarks.paired import paired, record  # noqa: E402


def write_images(root: Path, dataset: str, count: int) -> list[Path]:
    if dataset == "digits":
        paths = write_digits_images(root, size=32)  # 1797 files
        while len(paths) < count:  # more: copies under another folder
            extra = root / f"copy{len(paths)}"
            paths += [_copy(p, extra / p.relative_to(root)) for p in paths[: count - len(paths)]]
        return sorted(paths[:count])
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"{i % 10}" / f"{i:05d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(path)
        paths.append(path)
    return paths


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def bare_loop(predictor: Predictor, paths: list[Path], batch_size: int) -> float:
    """Images per second of read + decode + predict_proba in this process."""
    spec = predictor.spec
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = [
            to_model_input(p.read_bytes(), spec.image_size, spec.in_channels)
            for p in paths[start : start + batch_size]
        ]
        predictor.predict_proba(np.stack(batch)).argmax(1)
    return len(paths) / (time.perf_counter() - started)


def pipeline(model: ModelFiles, paths: list[Path], out: Path, batch_size: int) -> float:
    """Images per second of the job's Ray Data pipeline, files to Parquet."""
    import pyarrow.fs as pafs

    options = ScoringOptions(3, "bench", "1", "")
    fs = pafs.LocalFileSystem()
    started = time.perf_counter()
    run_pipeline(
        fs, [str(p) for p in paths], None, model, options, fs, str(out), batch_size,
        Resources.of_cluster(),
    )  # fmt: skip
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4000 images instead of 10000")
    parser.add_argument("--images", type=int, default=None, help="files to score")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (A B, B A, ...)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dataset", default="cifar10", choices=["cifar10", "digits"])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="Ray logical CPUs")
    args = parser.parse_args()
    count = args.images or (4000 if args.quick else 10000)
    rounds = args.rounds or (2 if args.quick else 4)

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root / "images", args.dataset, count)
        spec = ModelSpec.for_dataset(args.model, dataset_info(args.dataset))
        torch.manual_seed(0)
        folder = save_model_files(cpu_state_dict(build_model(spec)), spec, root / "model")
        model = ModelFiles.from_folder(folder)
        predictor = Predictor.from_folder(folder)
        os.environ["PYTHONPATH"] = str(REPO)
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
        try:
            resources = Resources.of_cluster()
            pipeline(model, paths[: args.batch_size], root / "warm-up", args.batch_size)
            bare_loop(predictor, paths[: args.batch_size], args.batch_size)
            outputs = (root / f"out-{i}" for i in range(rounds))
            result = paired(
                lambda: pipeline(model, paths, next(outputs), args.batch_size),
                lambda: bare_loop(predictor, paths, args.batch_size),
                rounds,
            )
        finally:
            ray.shutdown()
    print(
        record(
            {
                "bench": "batch_predict",
                "dataset": args.dataset,
                "model": args.model,
                "images": count,
                "actors": resources.actors,
                "device": resources.device,
                "goal": ">= 0.8",
                **result.summary(),
            }
        )
    )


if __name__ == "__main__":
    main()
