"""A sweep's search space: a small typed language, validated against the training config
before any trial starts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.config import ConfigError
from app.train.config import TrainConfig


def trial_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The training fields of a (sweep) config, minus what only the sweep does (register)."""
    fields = set(TrainConfig.model_fields) - {"register_as", "alias", "results_json"}
    return cfg.model_dump(mode="json", include=fields)


class _Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Range(_Dimension):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class LogUniform(_Range):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class Uniform(_Range):
    type: Literal["uniform"]


class Choice(_Dimension):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def bounds(self) -> list[Any]:
        return self.values


Dimension = Annotated[LogUniform | Uniform | Choice, Field(discriminator="type")]

# The mission's defaults: lr log-uniform 1e-4..1e-2, weight decay log-uniform 1e-5..1e-3,
# momentum uniform 0.8..0.99, a batch-size choice.
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    "momentum": {"type": "uniform", "low": 0.8, "high": 0.99},
    "batch_size": {"type": "choice", "values": [32, 64, 128]},
}


class SearchSpace(BaseModel):
    """Field name -> dimension. Every bound must itself be a valid training value."""

    dimensions: dict[str, Dimension]

    @classmethod
    def parse(cls, raw: Any, base: TrainConfig, source: str) -> SearchSpace:
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{source}: a search space is a non-empty mapping field: dimension")
        try:
            space = cls(dimensions={str(k).replace("-", "_"): v for k, v in raw.items()})
        except ValidationError as exc:
            lines = [
                f"  {'.'.join(map(str, e['loc'][1:]))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            ]
            raise ConfigError(f"{source}: invalid search space:\n" + "\n".join(lines)) from exc
        space.check_against(base, source)
        return space

    def check_against(self, base: TrainConfig, source: str) -> None:
        tunable = set(TrainConfig.model_fields) - NOT_TUNABLE
        errors = []
        for name, dimension in self.dimensions.items():
            if name not in tunable:
                errors.append(f"  {name}: not a tunable training field")
                continue
            for value in dimension.bounds():
                try:
                    TrainConfig.model_validate({**trial_fields(base), name: value})
                except ValidationError as exc:
                    errors.append(f"  {name}={value!r}: {exc.errors()[0]['msg']}")
        if errors:
            raise ConfigError(f"{source}: invalid search space:\n" + "\n".join(errors))

    def to_tune(self, grid: bool) -> dict[str, Any]:
        """Ray Tune sampling objects; with ``grid`` every choice becomes a grid axis."""
        from ray import tune

        out: dict[str, Any] = {}
        for name, dim in self.dimensions.items():
            if isinstance(dim, LogUniform):
                out[name] = tune.loguniform(dim.low, dim.high)
            elif isinstance(dim, Uniform):
                out[name] = tune.uniform(dim.low, dim.high)
            else:
                out[name] = tune.grid_search(dim.values) if grid else tune.choice(dim.values)
        return out

    def describe(self) -> dict[str, Any]:
        return {name: dim.model_dump() for name, dim in self.dimensions.items()}


# Fields a sweep fixes for every trial (they name where things go, not how a model learns).
NOT_TUNABLE = {
    "results_json",
    "experiment",
    "run_name",
    "register_as",
    "alias",
    "storage_path",
    "data_dir",
    "download",
    "dataset",
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
    "max_failures",
    "max_preemption_failures",
    "log_every_n_batches",
    "val_fraction",
}
