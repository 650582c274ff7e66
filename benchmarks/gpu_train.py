"""Training throughput on one GPU: the project's per-worker loop against a plain and a naive
PyTorch loop, for each model, in one run.

    python benchmarks/gpu_train.py                  # one GPU, 50,000 CIFAR-shaped images
    python benchmarks/gpu_train.py --compile        # the same with torch.compile on (a) and (b)
    python benchmarks/gpu_train.py --quick          # on CPU, a few images: every path in < 2 min

The data are synthetic (uint8 3x32x32 images, 10 labels): throughput does not depend on the
pixels, and no dataset can be downloaded where the GPU figures are taken. Per model:

(a) project: ``app.train.loop.train_worker`` through ``LocalContext``: the data path (split held
    on the device as uint8, augmentation and normalisation per batch there), precision,
    channels_last and model exactly as a Ray Train worker runs them, without Ray (Ray Train's
    own overhead is what benchmarks/train_overhead.py measures);
(b) plain: a hand-written loop with the same model, precision, memory format, augmentation and
    batch size (benchmarks/baselines.py);
(c) naive: fp32, a DataLoader over CPU tensors, no augmentation.

Images per second is the median over the epochs after the first (the first warms up cuDNN's
autotuner, the allocator and, with --compile, the compiled graphs; compile time is printed
apart). Peak GPU memory is per variant. Goals: (a)/(b) >= 0.95 and (a)/(c) >= 2.0.
Imports no Ray and no MLflow. Last line: one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess  # nosec B404: only nvidia-smi, with fixed arguments
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from app.datasets import ImageSplits, dataset_info
from app.devices import pick_device
from app.models import architecture_names
from app.train.config import TrainConfig
from app.train.context import LocalContext
from app.train.loop import train_worker
from app.train.optim import resolve_precision
from benchmarks.baselines import naive_epochs, plain_epochs

MODELS = architecture_names()  # every registered architecture (app/models/catalog/)
T = TypeVar("T")


def synthetic_cifar(n_train: int, n_eval: int, seed: int = 0) -> ImageSplits:
    generator = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=generator)

    return ImageSplits(
        dataset_info("cifar10"),
        images(n_train), labels(n_train),
        images(n_eval), labels(n_eval),
        images(n_eval), labels(n_eval),
        fingerprint="synthetic",
    )  # fmt: skip


def with_peak_memory(device: torch.device, run: Callable[[], T]) -> tuple[T, float | None]:
    """``run()``'s result and the peak GPU memory it allocated, in MiB (None on CPU)."""
    if device.type != "cuda":
        return run(), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    result = run()
    return result, torch.cuda.max_memory_allocated(device) / 2**20


def steady_rate(images: int, epoch_seconds: list[float]) -> float:
    """Images per second over the epochs after the first."""
    return images / statistics.median(epoch_seconds[1:])


def bench_model(cfg: TrainConfig, splits: ImageSplits, device: torch.device) -> dict[str, Any]:
    n = len(splits.y_train)
    precision = resolve_precision(cfg.mixed_precision, device)
    on_gpu = device.type == "cuda"

    def project() -> list[dict[str, float]]:
        ctx = LocalContext(device)
        train_worker(cfg, splits, ctx, log=lambda line: print(f"  (a) project  {line}"))
        return ctx.reports

    reports, project_peak = with_peak_memory(device, project)
    plain, plain_peak = with_peak_memory(
        device,
        lambda: plain_epochs(
            cfg, splits, device, precision.autocast_dtype, on_gpu, compile_model=cfg.compile
        ),
    )
    naive, naive_peak = with_peak_memory(device, lambda: naive_epochs(cfg, splits, device))
    rates = {
        "project": statistics.median(r["images_per_sec"] for r in reports[1:]),
        "plain": steady_rate(n, plain),
        "naive": steady_rate(n, naive),
    }
    peaks = {"project": project_peak, "plain": plain_peak, "naive": naive_peak}
    row = {
        "model": cfg.model,
        "batch_size": cfg.batch_size,
        "precision": precision.name,
        "compile_s": reports[0].get("compile_seconds"),
        **{f"{name}_img_s": round(rate, 1) for name, rate in rates.items()},
        **{
            f"{name}_peak_mib": None if peak is None else round(peak)
            for name, peak in peaks.items()
        },
        "project_vs_plain": round(rates["project"] / rates["plain"], 3),
        "project_vs_naive": round(rates["project"] / rates["naive"], 3),
    }
    print(
        f"{cfg.model:20s} bs {cfg.batch_size} {precision.name}: project {rates['project']:,.0f}"
        f"  plain {rates['plain']:,.0f}  naive {rates['naive']:,.0f} img/s  "
        f"(a)/(b) {row['project_vs_plain']:.3f}  (a)/(c) {row['project_vs_naive']:.2f}"
    )
    return row


def describe_device(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        if smi := shutil.which("nvidia-smi"):
            query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(  # noqa: S603  # nosec B603: fixed arguments
                query, capture_output=True, text=True, check=False
            ).stdout.strip()
    return info


def bench_device(parser: argparse.ArgumentParser, quick: bool) -> torch.device:
    """The CPU for --quick (code paths only), else the GPU; without one, a usage error."""
    if quick:
        return torch.device("cpu")
    device = pick_device()
    if device.type != "cuda":
        parser.error("no GPU here: use --quick to exercise the code paths on CPU")
    return device


def emit(summary: dict[str, Any], out: Path | None) -> None:
    """The summary as the last line of output, and in ``out`` when given."""
    line = json.dumps(summary)
    if out:
        out.write_text(line + "\n")
    print(line)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CPU, 192 images, 2 epochs")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--images", type=int, default=50_000, help="training images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs; the first is warm-up")
    parser.add_argument("--batch-size", type=int, help="default: the platform's for the device")
    parser.add_argument("--compile", action="store_true", help="torch.compile (a) and (b)")
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    device = bench_device(parser, args.quick)
    if args.quick:
        args.images, args.epochs = 192, 2
    splits = synthetic_cifar(args.images, n_eval=max(64, args.images // 50))
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    rows = []
    for model in args.models:
        cfg = TrainConfig(
            dataset="cifar10", model=model, epochs=args.epochs, num_workers=1,
            use_gpu=device.type == "cuda", lr_schedule="constant", compile=args.compile,
            log_every_n_batches=1_000_000, **overrides,
        )  # fmt: skip
        rows.append(bench_model(cfg, splits, device))
    summary = {
        "bench": "gpu_train",
        **describe_device(device),
        "images": args.images,
        "epochs": args.epochs,
        "compile": args.compile,
        "models": rows,
        "min_project_vs_plain": min(r["project_vs_plain"] for r in rows),
        "min_project_vs_naive": min(r["project_vs_naive"] for r in rows),
    }
    emit(summary, args.out)
    return summary


if __name__ == "__main__":
    main()
