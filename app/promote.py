"""Promote a model alias only when the evaluation says so: both aliases are scored on the same
test split, and the target alias moves only if the challenger is at least as good (and passes
its checks), or with ``--force`` and a reason."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from app import model_registry, tracking
from app.config import ALIAS_PATTERN, MODEL_NAME_PATTERN, DatasetName, DatasetOptions, Experiment
from app.datasets import ImageSplits, load_splits
from app.errors import JobFailedError
from app.evaluate import EVAL_EXPERIMENT, EvaluateConfig, evaluate

IMAGE_FOLDER_FIELDS = {"image_folder", "image_size", "channels", "test_fraction"}


class PromoteConfig(DatasetOptions):
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
    min_improvement: float = Field(
        0.0, ge=-1, le=1, description="challenger accuracy must beat the champion's by this"
    )
    force: bool = Field(False, description="move the alias whatever the evaluation says")
    reason: str | None = Field(None, max_length=500, description="why (required with --force)")
    experiment: Experiment = EVAL_EXPERIMENT


class PromotionRefusedError(JobFailedError):
    """The challenger did not earn the alias (or a model failed its checks); nothing changed."""


# ---------------------------------------------------------------------------------------------
# Promotion


def promote(cfg: PromoteConfig) -> dict[str, Any]:
    """Evaluate both aliases on the same test split; move ``to_alias`` only if the challenger
    is at least as good (plus ``min_improvement``) and passes its checks, or with ``force``."""
    if cfg.force and not cfg.reason:
        raise ValueError("--force needs --reason: a forced promotion records who and why")
    tracking.configure()
    challenger_version = model_registry.alias_version(cfg.model_name, cfg.from_alias)
    if challenger_version is None:
        raise ValueError(f"{cfg.model_name} has no @{cfg.from_alias} version to promote")
    champion_version = model_registry.alias_version(cfg.model_name, cfg.to_alias)

    def evaluate_version(version: str, splits: ImageSplits | None) -> dict[str, Any]:
        # The version read above, never the alias again: an alias that moves meanwhile (a
        # sweep registering a new challenger) cannot swap in a model nobody evaluated.
        return evaluate(
            EvaluateConfig(
                model_uri=f"models:/{cfg.model_name}/{version}",
                dataset=cfg.dataset,
                data_dir=cfg.data_dir,
                download=cfg.download,
                experiment=cfg.experiment,
                **cfg.model_dump(include=IMAGE_FOLDER_FIELDS, exclude_unset=True),
            ),
            splits,
        )

    challenger = evaluate_version(challenger_version, None)
    channels, size, _ = challenger["input_shape"]  # an image folder loads at the model's shape
    folder = cfg.image_folder_source(size, channels)
    splits = load_splits(challenger["dataset"], cfg.data_dir, cfg.download, folder=folder)
    champion = evaluate_version(champion_version, splits) if champion_version else None
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
    # Only if both aliases still point where they did when evaluated.
    expected = {cfg.from_alias: challenger_version, cfg.to_alias: champion_version}
    try:
        model_registry.move_alias(
            cfg.model_name, cfg.to_alias, challenger_version, record, expected
        )
    except model_registry.AliasMovedError as exc:
        raise PromotionRefusedError(f"promotion abandoned: {exc}", results) from exc
    results["promoted"] = True
    print(
        f"@{cfg.to_alias} -> {cfg.model_name} v{challenger_version} "
        f"(was {champion_version or 'unset'})" + (" [forced]" if cfg.force else ""),
        flush=True,
    )
    return results
