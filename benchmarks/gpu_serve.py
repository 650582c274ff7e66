"""Inference throughput of the Serve deployment's per-batch path against a bare forward pass,
at batch sizes 1..256, on one GPU.

    python benchmarks/gpu_serve.py             # one GPU: resnet18, mobilenet_v3_small/large
    python benchmarks/gpu_serve.py --quick     # CPU, batch sizes 1..32: the code path, < 2 min

(a) served: ``Predictor.serve_proba``, what each Classifier replica (serve/service.py) runs
    per dynamic batch: uint8 images from host memory to the device, normalisation there, the
    float16 forward pass (float32 on CPU), softmax, probabilities back to the host;
(b) bare: ``model(x)`` at the same precision on an input already normalised on the device.

The HTTP and Ray Serve hops around it are what benchmarks/serve_load.py measures. Models are
untrained (throughput does not depend on the weights), CIFAR-shaped (3x32x32). Each point is
the median of timed repeats after a warm-up. Imports no Ray and no MLflow. Last line: one JSON
object (also written to --out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from app.datasets import dataset_info, normalize
from app.inference import Predictor, serving_dtype
from app.models import ModelSpec, build_model
from benchmarks.gpu_train import MODELS, bench_device, describe_device, emit


def rate(batch: int, run: Callable[[], object], device: torch.device, seconds: float) -> float:
    """Images per second of ``run`` (one batch), median over repeats filling ``seconds``."""
    run()  # warm-up: cuDNN autotuning, allocator
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def measure(classifier: Predictor, size: int, seconds: float) -> dict[str, Any]:
    device = classifier.device
    images = np.random.default_rng(size).integers(0, 256, (size, 3, 32, 32), dtype=np.uint8)
    on_device = normalize(torch.from_numpy(images).to(device), classifier.spec.dataset_info())

    def bare() -> object:
        with (
            torch.inference_mode(),
            torch.autocast(
                device.type, dtype=classifier.serving_dtype, enabled=device.type == "cuda"
            ),
        ):
            return classifier.model(on_device)

    served = rate(size, lambda: classifier.serve_proba(images), device, seconds)
    baseline = rate(size, bare, device, seconds)
    print(
        f"{classifier.spec.architecture:20s} batch {size:4d}: served {served:10,.0f}  "
        f"bare {baseline:10,.0f} img/s  ratio {served / baseline:.3f}"
    )
    return {
        "model": classifier.spec.architecture,
        "batch": size,
        "served_img_s": round(served, 1),
        "bare_img_s": round(baseline, 1),
        "ratio": round(served / baseline, 3),
    }


def bench_model(
    architecture: str, device: torch.device, sizes: list[int], seconds: float
) -> list[dict[str, Any]]:
    spec = ModelSpec.for_dataset(architecture, dataset_info("cifar10"))
    classifier = Predictor.on_device(build_model(spec), spec, device)
    return [measure(classifier, size, seconds) for size in sizes]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CPU, batch sizes 1..32")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seconds", type=float, default=1.0, help="timed repeats per point")
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    device = bench_device(parser, args.quick)
    sizes = [2**i for i in range(6 if args.quick else 9)]
    seconds = 0.2 if args.quick else args.seconds
    rows = [row for model in args.models for row in bench_model(model, device, sizes, seconds)]
    summary = {
        "bench": "gpu_serve",
        **describe_device(device),
        "precision": str(serving_dtype(device)).removeprefix("torch."),
        "points": rows,
        "ratio_at_max_batch": min(r["ratio"] for r in rows if r["batch"] == sizes[-1]),
    }
    emit(summary, args.out)
    return summary


if __name__ == "__main__":
    main()
