"""Registered models for tests, made in seconds without a Ray cluster: weights trained in
this process (the real loop through LocalContext) or left untrained, logged through the same
app.model_registry.log_model the jobs use."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from app import model_registry, tracking
from app.datasets import ImageSplits, load_splits
from app.evaluation import evaluate_model
from app.models import ModelSpec, build_model, cpu_state_dict
from app.train.config import TrainConfig
from app.train.context import LocalContext
from app.train.loop import train_worker


def digits_state(epochs: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A resnet18 state dict for digits: trained ``epochs`` epochs, or untrained for 0."""
    splits = load_splits("digits")
    if epochs == 0:
        torch.manual_seed(seed)
        return cpu_state_dict(build_model(ModelSpec.for_dataset("resnet18", splits.info)))
    ctx = LocalContext(torch.device("cpu"))
    cfg = TrainConfig(epochs=epochs, num_workers=1, batch_size=64, seed=seed)
    train_worker(cfg, splits, ctx, log=lambda _: None)
    assert ctx.checkpoint is not None
    state: dict[str, Any] = ctx.checkpoint["model"]
    return state


def log_digits_model(
    state: dict[str, torch.Tensor], experiment: str, splits: ImageSplits | None = None
) -> tuple[str, float]:
    """Log ``state`` as a model run (with its test accuracy); return (run_id, accuracy)."""
    splits = splits or load_splits("digits")
    spec = ModelSpec.for_dataset("resnet18", splits.info)
    model = build_model(spec)
    model.load_state_dict(state)
    report, _ = evaluate_model(model, splits.x_test, splits.y_test, splits.info)
    run_id = tracking.start_run(
        experiment,
        None,
        {"model": "resnet18"},
        {"dataset": "digits", "dataset_fingerprint": splits.fingerprint},
    )
    buffer = tracking.MetricBuffer(run_id)
    buffer.log({"test_accuracy": report.accuracy}, step=0)
    buffer.flush()
    example = splits.x_test[:2, 0].numpy()
    model_registry.log_model(run_id, state, spec, example)
    tracking.client().set_terminated(run_id)
    return run_id, report.accuracy


def log_untrained(spec: ModelSpec, state: dict[str, torch.Tensor]) -> str:
    run_id = tracking.start_run("serving-tests", None, {"model": spec.architecture}, {})
    side = spec.image_size
    shape = (2, side, side) if spec.in_channels == 1 else (2, side, side, spec.in_channels)
    model_registry.log_model(run_id, state, spec, np.zeros(shape, dtype=np.uint8))
    return run_id
