"""Evaluate a model (the evaluation job and the promotion gate).

Evaluation: test accuracy, macro F1, the per-class table, the confusion matrix and the hardest
errors, logged as an evaluation run linked to the model version, plus three behavioural checks
(Made-With-ML style):
- shift invariance: predictions agree with themselves under one-pixel shifts;
- per-class floor: every class's recall is at least a floor;
- known answers: the most typical test images of each class (closest to their class mean)
  are classified correctly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from pydantic import Field

from app import model_registry, tracking
from app.config import DatasetName, DatasetOptions, Experiment
from app.dataset_lineage import log_dataset
from app.datasets import ImageSplits, load_splits
from app.errors import JobFailedError
from app.evaluation import EvalReport, log_evaluation, score
from app.inference import Predictor

EVAL_EXPERIMENT = "model-evaluation"


class EvaluateConfig(DatasetOptions):
    model_uri: str = Field(
        description="runs:/<id>/model, models:/<name>@<alias>, models:/<name>/<version>"
    )
    dataset: DatasetName | None = Field(
        None, description="test split to score on (default: the dataset the model was trained on)"
    )
    experiment: Experiment = EVAL_EXPERIMENT
    class_floor: float = Field(0.8, ge=0, le=1, description="check: minimum recall per class")
    shift_agreement: float = Field(
        0.85, ge=0, le=1, description="check: predictions unchanged under 1-pixel shifts"
    )
    known_answer_accuracy: float = Field(
        1.0, ge=0, le=1, description="check: accuracy on each class's most typical images"
    )
    fail_on_checks: bool = Field(True, description="exit non-zero when a behavioural check fails")


@dataclass
class CheckResult:
    name: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold


class ChecksFailedError(JobFailedError):
    """The model failed its behavioural checks."""


# ---------------------------------------------------------------------------------------------
# Behavioural checks


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move images by (dx, dy) pixels, filling with zeros (as the training crops do)."""
    pad = max(abs(dx), abs(dy))
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    h, w = images.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def shift_agreement(classifier: Predictor, images: torch.Tensor) -> float:
    """Share of (image, one-pixel shift) pairs whose predicted class does not change."""
    base = classifier.predict_proba(images).argmax(1)
    agreements = [
        (classifier.predict_proba(shift(images, dx, dy)).argmax(1) == base).float().mean()
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
    ]
    return float(torch.stack(agreements).mean())


def typical_examples(
    images: torch.Tensor, labels: torch.Tensor, per_class: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class, the test images closest to that class's mean image: the known answers
    any competent model gets right."""
    flat = images.flatten(1).float()
    picked = []
    for cls in labels.unique():
        members = torch.nonzero(labels == cls).flatten()
        distances = (flat[members] - flat[members].mean(0)).norm(dim=1)
        picked.append(members[distances.argsort()[:per_class]])
    index = torch.cat(picked)
    return images[index], labels[index]


def behavioural_checks(
    classifier: Predictor, splits: ImageSplits, report: EvalReport, cfg: EvaluateConfig
) -> list[CheckResult]:
    known_images, known_labels = typical_examples(splits.x_test, splits.y_test)
    known = classifier.predict_proba(known_images).argmax(1) == known_labels
    sample = splits.x_test[:512]
    return [
        CheckResult("shift_agreement", shift_agreement(classifier, sample), cfg.shift_agreement),
        CheckResult(
            "min_class_recall",
            min(s.recall for s in report.per_class if s.support),
            cfg.class_floor,
        ),
        CheckResult(
            "known_answer_accuracy", float(known.float().mean()), cfg.known_answer_accuracy
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Evaluation


def _open_evaluation_run(
    cfg: EvaluateConfig,
    ref: model_registry.ModelRef,
    dataset: str,
    fingerprint: str,
    checks: list[CheckResult],
) -> str:
    params = {
        "model_uri": cfg.model_uri,
        "dataset": dataset,
        **{f"check.{c.name}.threshold": c.threshold for c in checks},
    }
    tags = {
        "model_uri": cfg.model_uri,
        "model_name": ref.name or "",
        "model_version": ref.version or "",
        "source_run_id": ref.run_id,
        "dataset": dataset,
        "dataset_fingerprint": fingerprint,
    }
    name = f"eval-{ref.name or ref.run_id}-{ref.version or ''}".rstrip("-")
    return tracking.start_run(cfg.experiment, name, params, tags)


def _print_verdict(
    cfg: EvaluateConfig, report: EvalReport, checks: list[CheckResult], run_id: str
) -> None:
    for check in checks:
        mark = "ok  " if check.passed else "FAIL"
        print(f"[{mark}] {check.name} = {check.value:.4f} (threshold {check.threshold})")
    print(
        f"{cfg.model_uri}: accuracy {report.accuracy:.4f}  macro F1 {report.macro_f1:.4f}  "
        f"(evaluation run {run_id})",
        flush=True,
    )


def evaluate(cfg: EvaluateConfig, splits: ImageSplits | None = None) -> dict[str, Any]:
    """Score a model on a test split, run the checks, log an evaluation run; return results."""
    tracking.configure()
    ref = model_registry.resolve_model_uri(cfg.model_uri)
    predictor = model_registry.load_predictor(cfg.model_uri)
    classes = predictor.spec.classes
    dataset = cfg.dataset or predictor.spec.dataset
    if dataset != predictor.spec.dataset:
        raise ValueError(f"{cfg.model_uri} was trained on {predictor.spec.dataset}, not {dataset}")
    folder = cfg.image_folder_source(predictor.spec.image_size, predictor.spec.in_channels)
    splits = splits or load_splits(dataset, cfg.data_dir, cfg.download, folder=folder)
    spec = predictor.spec
    probabilities = predictor.predict_proba(splits.x_test)
    report = score(splits.y_test.numpy(), probabilities.argmax(1).numpy(), classes)
    checks = behavioural_checks(predictor, splits, report, cfg)
    run_id = _open_evaluation_run(cfg, ref, dataset, splits.fingerprint, checks)
    log_dataset(run_id, dataset, splits, context="evaluation")
    buffer = tracking.MetricBuffer(run_id)
    metrics = {"test_accuracy": report.accuracy, "test_macro_f1": report.macro_f1}
    buffer.log({**metrics, **{c.name: c.value for c in checks}}, step=0)
    buffer.drain()
    client = tracking.client()
    log_evaluation(client, run_id, report, probabilities, splits.x_test, splits.y_test, classes)
    passed = all(c.passed for c in checks)
    tracking.set_tags(run_id, {"checks_passed": str(passed)})
    client.set_terminated(run_id)
    if ref.name and ref.version:
        client.set_model_version_tag(ref.name, ref.version, "last_evaluation_run_id", run_id)
        accuracy = f"{report.accuracy:.6f}"
        client.set_model_version_tag(ref.name, ref.version, "last_evaluation_accuracy", accuracy)
    _print_verdict(cfg, report, checks, run_id)
    return {
        "model_uri": cfg.model_uri,
        "model_name": ref.name,
        "model_version": ref.version,
        "dataset": dataset,
        "input_shape": [spec.in_channels, spec.image_size, spec.image_size],
        "evaluation_run_id": run_id,
        **report.summary(),
        "checks": [{**asdict(c), "passed": c.passed} for c in checks],
        "checks_passed": passed,
        "lineage": model_registry.lineage(ref),
    }


def run_evaluation_job(cfg: EvaluateConfig) -> dict[str, Any]:
    results = evaluate(cfg)
    if cfg.fail_on_checks and not results["checks_passed"]:
        failed = [c["name"] for c in results["checks"] if not c["passed"]]
        raise ChecksFailedError(f"behavioural checks failed: {', '.join(failed)}", results)
    return results
