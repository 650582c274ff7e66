"""The sweep job's configuration: every training field plus search, scheduling and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from app.config import ALIAS_PATTERN, ConfigError, flag_name
from app.train.config import TrainConfig
from app.tune.space import DEFAULT_SPACE, SearchSpace, trial_fields


class TuneConfig(TrainConfig):
    """A sweep: every training field (applied to each trial; ``epochs`` is the maximum) plus
    search, scheduling and resume settings."""

    num_samples: int = Field(8, ge=1, le=100_000, description="trials to run")
    max_concurrent: int | None = Field(
        None, ge=1, le=10_000, description="trials at once (default: as many as the cluster fits)"
    )
    scheduler: Literal["asha", "none"] = Field("asha", description="early stopping")
    search: Literal["hyperopt", "random", "grid"] = Field("hyperopt", description="search alg")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/factor at each rung")
    metric: str = Field("val_accuracy", min_length=1, description="metric to optimise")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    space_file: Path | None = Field(None, description="YAML search space (overrides the default)")
    points_to_evaluate: str | None = Field(
        None, description="hyperopt warm start: a JSON list of configs, or a YAML/JSON file of one"
    )
    resume: bool = Field(False, description="resume the sweep named by --run-name (or the latest)")
    autoscaler_node_types: str | None = Field(
        None,
        description="the autoscaler's worker groups, as JSON "
        '{"GROUP": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 4}}, when Ray does not '
        "report them: sizes the sweep from what the cluster can grow to (set in the RayCluster)",
    )
    alias: str | None = Field(
        "challenger", pattern=ALIAS_PATTERN, description="alias for the registered best model"
    )

    def space(self) -> SearchSpace:
        if self.space_file is None:
            return SearchSpace.parse(DEFAULT_SPACE, self, "default search space")
        try:
            raw = yaml.safe_load(self.space_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--space-file: cannot read {self.space_file}: {exc}") from exc
        return SearchSpace.parse(raw, self, str(self.space_file))

    def warm_start(self, space: SearchSpace) -> list[dict[str, Any]]:
        if not self.points_to_evaluate:
            return []
        text = self.points_to_evaluate.strip()
        source = flag_name("points_to_evaluate")
        try:
            raw = yaml.safe_load(text if text.startswith("[") else Path(text).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{source}: cannot read {text!r}: {exc}") from exc
        if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
            raise ConfigError(f"{source}: expected a list of {{field: value}} mappings")
        for point in raw:
            unknown = set(point) - set(space.dimensions)
            if unknown:
                raise ConfigError(f"{source}: {sorted(unknown)} not in the search space")
            SearchSpace.parse(
                {k: {"type": "choice", "values": [v]} for k, v in point.items()}, self, source
            )
        return raw

    def trial_base(self) -> dict[str, Any]:
        """The TrainConfig every trial starts from."""
        return trial_fields(self)


def validate_before_start(cfg: TuneConfig) -> tuple[SearchSpace, list[dict[str, Any]]]:
    space = cfg.space()
    return space, cfg.warm_start(space)
