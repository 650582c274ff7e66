"""Model lifecycle: evaluate a registered model (with behavioural checks) and promote an alias
only when the evaluation says so.

Evaluation: test accuracy, macro F1, the per-class table, the confusion matrix and the hardest
errors, logged as an evaluation run linked to the model version, plus three behavioural checks
(Made-With-ML style):
- shift invariance: predictions agree with themselves under one-pixel shifts;
- per-class floor: every class's recall is at least a floor;
- known answers: the most typical test images of each class (closest to their class mean)
  are classified correctly.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from app import tracking
from app.cli import JobFailedError
from app.config import ALIAS_PATTERN, MODEL_NAME_PATTERN, DatasetName, JobConfig
from app.data import ImageSplits, load_dataset
from app.evaluation import EvalReport, plot_confusion_matrix, plot_hardest_errors, score
from app.inference import Classifier

EVAL_EXPERIMENT = "model-evaluation"


class EvaluateConfig(JobConfig):
    model_uri: str = Field(
        description="runs:/<id>/model, models:/<name>@<alias>, models:/<name>/<version>"
    )
    dataset: DatasetName | None = Field(
        None, description="test split to score on (default: the dataset the model was trained on)"
    )
    data_dir: Path = Field(Path("data"), description="where dataset files are read / downloaded")
    download: bool = Field(True, description="download a missing dataset when online")
    experiment: str = Field(EVAL_EXPERIMENT, min_length=1, description="MLflow experiment")
    class_floor: float = Field(0.8, ge=0, le=1, description="check: minimum recall per class")
    shift_agreement: float = Field(
        0.85, ge=0, le=1, description="check: predictions unchanged under 1-pixel shifts"
    )
    known_answer_accuracy: float = Field(
        1.0, ge=0, le=1, description="check: accuracy on each class's most typical images"
    )
    fail_on_checks: bool = Field(True, description="exit non-zero when a behavioural check fails")


class PromoteConfig(JobConfig):
    model_name: str = Field(pattern=MODEL_NAME_PATTERN, description="registered model")
    from_alias: str = Field(
        "challenger",
        pattern=ALIAS_PATTERN,
        description="alias to promote",
        json_schema_extra={"flags": ["--from"]},
    )
    to_alias: str = Field(
        "champion",
        pattern=ALIAS_PATTERN,
        description="alias to move",
        json_schema_extra={"flags": ["--to"]},
    )
    dataset: DatasetName | None = Field(None, description="test split (default: the model's)")
    data_dir: Path = Field(Path("data"), description="where dataset files are read / downloaded")
    download: bool = Field(True, description="download a missing dataset when online")
    min_improvement: float = Field(
        0.0, ge=-1, le=1, description="challenger accuracy must beat the champion's by this"
    )
    force: bool = Field(False, description="move the alias whatever the evaluation says")
    reason: str | None = Field(None, max_length=500, description="why (required with --force)")
    experiment: str = Field(EVAL_EXPERIMENT, min_length=1, description="MLflow experiment")


@dataclass
class CheckResult:
    name: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold


class PromotionRefusedError(JobFailedError):
    """The challenger did not earn the alias (or a model failed its checks); nothing changed."""


# ---------------------------------------------------------------------------------------------
# Behavioural checks


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move images by (dx, dy) pixels, filling with zeros (as the training crops do)."""
    pad = max(abs(dx), abs(dy))
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    h, w = images.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def shift_agreement(classifier: Classifier, images: torch.Tensor) -> float:
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
    classifier: Classifier, splits: ImageSplits, report: EvalReport, cfg: EvaluateConfig
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


def evaluate(cfg: EvaluateConfig, splits: ImageSplits | None = None) -> dict[str, Any]:
    """Score a model on a test split, run the checks, log an evaluation run; return results."""
    tracking.configure()
    ref = tracking.resolve_model_uri(cfg.model_uri)
    classifier = tracking.load_classifier(cfg.model_uri)
    dataset = cfg.dataset or classifier.spec.dataset
    if dataset != classifier.spec.dataset:
        raise ValueError(f"{cfg.model_uri} was trained on {classifier.spec.dataset}, not {dataset}")
    splits = splits or load_dataset(dataset, cfg.data_dir, cfg.download)
    probabilities = classifier.predict_proba(splits.x_test)
    report = score(splits.y_test.numpy(), probabilities.argmax(1).numpy(), classifier.spec.classes)
    checks = behavioural_checks(classifier, splits, report, cfg)

    run_id = tracking.start_run(
        cfg.experiment,
        f"eval-{ref.name or ref.run_id}-{ref.version or ''}".rstrip("-"),
        {
            "model_uri": cfg.model_uri,
            "dataset": dataset,
            **{f"check.{c.name}.threshold": c.threshold for c in checks},
        },
        {
            "model_uri": cfg.model_uri,
            "model_name": ref.name or "",
            "model_version": ref.version or "",
            "source_run_id": ref.run_id,
            "dataset": dataset,
            "dataset_fingerprint": splits.fingerprint,
        },
    )
    buffer = tracking.MetricBuffer(run_id)
    buffer.log(
        {
            "test_accuracy": report.accuracy,
            "test_macro_f1": report.macro_f1,
            **{c.name: c.value for c in checks},
        },
        step=0,
    )
    buffer.flush()
    client = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        classes = classifier.spec.classes
        client.log_artifact(
            run_id, str(plot_confusion_matrix(report, classes, folder / "confusion_matrix.png"))
        )
        client.log_artifact(
            run_id,
            str(
                plot_hardest_errors(
                    splits.x_test,
                    splits.y_test,
                    probabilities,
                    classes,
                    folder / "hardest_errors.png",
                )
            ),
        )
    client.log_table(run_id, report.table(), "per_class_metrics.json")
    passed = all(c.passed for c in checks)
    tracking.set_tags(run_id, {"checks_passed": str(passed)})
    client.set_terminated(run_id)
    if ref.name and ref.version:
        for key, value in {
            "last_evaluation_run_id": run_id,
            "last_evaluation_accuracy": f"{report.accuracy:.6f}",
        }.items():
            client.set_model_version_tag(ref.name, ref.version, key, value)

    for check in checks:
        mark = "ok  " if check.passed else "FAIL"
        print(f"[{mark}] {check.name} = {check.value:.4f} (threshold {check.threshold})")
    print(
        f"{cfg.model_uri}: accuracy {report.accuracy:.4f}  macro F1 {report.macro_f1:.4f}  "
        f"(evaluation run {run_id})",
        flush=True,
    )
    return {
        "model_uri": cfg.model_uri,
        "model_name": ref.name,
        "model_version": ref.version,
        "dataset": dataset,
        "evaluation_run_id": run_id,
        **report.summary(),
        "checks": [{**asdict(c), "passed": c.passed} for c in checks],
        "checks_passed": passed,
        "lineage": tracking.lineage(ref),
    }


def run_evaluation_job(cfg: EvaluateConfig) -> dict[str, Any]:
    results = evaluate(cfg)
    if cfg.fail_on_checks and not results["checks_passed"]:
        failed = [c["name"] for c in results["checks"] if not c["passed"]]
        raise PromotionRefusedError(f"behavioural checks failed: {', '.join(failed)}", results)
    return results


# ---------------------------------------------------------------------------------------------
# Promotion


def promote(cfg: PromoteConfig) -> dict[str, Any]:
    """Evaluate both aliases on the same test split; move ``to_alias`` only if the challenger
    is at least as good (plus ``min_improvement``) and passes its checks, or with ``force``."""
    if cfg.force and not cfg.reason:
        raise ValueError("--force needs --reason: a forced promotion records who and why")
    tracking.configure()
    challenger_version = tracking.alias_version(cfg.model_name, cfg.from_alias)
    if challenger_version is None:
        raise ValueError(f"{cfg.model_name} has no @{cfg.from_alias} version to promote")
    champion_version = tracking.alias_version(cfg.model_name, cfg.to_alias)

    def evaluate_alias(alias: str, splits: ImageSplits | None) -> dict[str, Any]:
        return evaluate(
            EvaluateConfig(
                model_uri=f"models:/{cfg.model_name}@{alias}",
                dataset=cfg.dataset,
                data_dir=cfg.data_dir,
                download=cfg.download,
                experiment=cfg.experiment,
            ),
            splits,
        )

    challenger = evaluate_alias(cfg.from_alias, None)
    splits = load_dataset(challenger["dataset"], cfg.data_dir, cfg.download)
    champion = evaluate_alias(cfg.to_alias, splits) if champion_version else None
    bar = (champion["accuracy"] if champion else 0.0) + cfg.min_improvement
    results = {
        "model_name": cfg.model_name,
        "from_alias": cfg.from_alias,
        "to_alias": cfg.to_alias,
        "challenger_version": challenger_version,
        "champion_version": champion_version,
        "challenger_accuracy": challenger["accuracy"],
        "champion_accuracy": champion["accuracy"] if champion else None,
        "required_accuracy": bar,
        "challenger_checks_passed": challenger["checks_passed"],
        "forced": cfg.force,
        "promoted": False,
    }
    earned = challenger["accuracy"] >= bar and challenger["checks_passed"]
    if not earned and not cfg.force:
        why = (
            f"challenger v{challenger_version} accuracy {challenger['accuracy']:.4f} < required "
            f"{bar:.4f}"
            if challenger["accuracy"] < bar
            else "challenger failed its checks"
        )
        raise PromotionRefusedError(f"promotion refused: {why}; @{cfg.to_alias} unchanged", results)
    record: dict[str, Any] = {
        "metric.test_accuracy": f"{challenger['accuracy']:.6f}",
        "previous_accuracy": "" if champion is None else f"{champion['accuracy']:.6f}",
        "evaluation_run_id": challenger["evaluation_run_id"],
    }
    if cfg.force:
        record.update(forced="true", forced_reason=cfg.reason or "")
    tracking.move_alias(cfg.model_name, cfg.to_alias, challenger_version, record)
    results["promoted"] = True
    print(
        f"@{cfg.to_alias} -> {cfg.model_name} v{challenger_version} "
        f"(was {champion_version or 'unset'})" + (" [forced]" if cfg.force else ""),
        flush=True,
    )
    return results
