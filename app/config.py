"""Validated configuration for every job.

One place merges the four sources a user reaches for, later ones winning:
field defaults < ``--config FILE.yaml`` < ``RAYVISION_<FIELD>`` environment variables < flags.
Flags are the field names in kebab-case. Every invalid value is reported at once, naming the
flag, and the process exits with status 2 before any Ray work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "RAYVISION_"

DatasetName = Literal["digits", "cifar10", "cifar100", "fashion_mnist"]
ModelName = Literal["resnet18", "mobilenet_v3_small", "mobilenet_v3_large"]
# MLflow registered-model names: letters, digits and - _ . (no slashes, no spaces).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
# Default batch sizes, and the learning rate that goes with CPU_BATCH_SIZE images per step.
CPU_BATCH_SIZE = 64
GPU_BATCH_PER_WORKER = 256
BASE_LR = 0.05


class JobConfig(BaseModel):
    """Fields every job shares."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())

    results_json: Path | None = Field(None, description="write a JSON summary of the job here")


class TrainConfig(JobConfig):
    """A training job: data, model, optimisation, Ray scaling and MLflow tracking."""

    dataset: DatasetName = Field("digits", description="dataset to train on")
    model: ModelName = Field("resnet18", description="architecture (torchvision, small-image stem)")
    epochs: int = Field(10, ge=1, le=10_000, description="training epochs")
    batch_size: int = Field(
        CPU_BATCH_SIZE,
        ge=1,
        le=65_536,
        description="global batch size, split evenly across workers; unset with --use-gpu: "
        f"{GPU_BATCH_PER_WORKER} per worker",
    )
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="optimizer")
    lr: float = Field(
        BASE_LR,
        gt=0,
        le=10,
        description=f"peak learning rate; unset, {BASE_LR} per {CPU_BATCH_SIZE} images of "
        "global batch (linear scaling)",
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW beta1)")
    weight_decay: float = Field(5e-4, ge=0, lt=1, description="weight decay")
    lr_schedule: Literal["onecycle", "cosine", "step", "constant"] = Field(
        "onecycle", description="learning-rate schedule, stepped every optimizer step"
    )
    warmup_epochs: float = Field(
        1.0, ge=0, le=100, description="linear warm-up length (onecycle and cosine)"
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="cross-entropy label smoothing")
    num_workers: int = Field(2, ge=1, le=4096, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0, le=256, description="logical CPUs per worker")
    grad_accum_steps: int = Field(
        1, ge=1, le=1024, description="micro-batches accumulated per optimizer step"
    )
    mixed_precision: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="autocast on GPU: auto = bf16 where supported, else fp16"
    )
    compile: bool = Field(
        False, description="torch.compile the model; its compile time is logged apart"
    )
    log_every_n_batches: int = Field(
        10, ge=1, le=1_000_000, description="batch-level metrics every N optimizer steps"
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="random seed (split, init, order)")
    data_dir: Path = Field(Path("data"), description="where dataset files are read / downloaded")
    download: bool = Field(True, description="download a missing dataset when online")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of train held out for val")
    experiment: str = Field(
        "image-classification", min_length=1, max_length=256, description="MLflow experiment"
    )
    run_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Ray Train run name; rerunning with the same name resumes from its checkpoint",
    )
    register_as: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="register the model under this name"
    )
    alias: str | None = Field(
        None, pattern=ALIAS_PATTERN, description="alias to point at the registered version"
    )
    storage_path: str | None = Field(
        None,
        description="Ray Train storage (local dir or s3://bucket/prefix), default ~/ray_results",
    )
    max_failures: int = Field(
        2, ge=-1, le=1000, description="worker-group restarts from the latest checkpoint"
    )

    @model_validator(mode="after")
    def _device_defaults(self) -> TrainConfig:
        """A GPU is fed bigger batches, and the learning rate follows the batch (the linear
        scaling rule, Goyal et al. 2017, with the warm-up the schedules already have)."""
        if "batch_size" not in self.model_fields_set and self.use_gpu:
            self.batch_size = GPU_BATCH_PER_WORKER * self.num_workers
        if "lr" not in self.model_fields_set:
            self.lr = BASE_LR * self.batch_size / CPU_BATCH_SIZE
        return self

    @model_validator(mode="after")
    def _batch_fits_workers(self) -> TrainConfig:
        if self.batch_size < self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be at least num_workers "
                f"({self.num_workers}): the global batch is split across workers"
            )
        if "alias" in self.model_fields_set and self.alias and not self.register_as:
            raise ValueError("alias needs register_as: an alias points at a registered version")
        return self

    @property
    def per_worker_batch_size(self) -> int:
        return self.batch_size // self.num_workers


ConfigT = TypeVar("ConfigT", bound=JobConfig)


class ConfigError(ValueError):
    """Invalid configuration; the message names every bad field."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return any(arg is bool for arg in get_args(annotation))
    return False


def _choices(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(c for arg in get_args(annotation) for c in _choices(arg))
    return ()


def build_parser(config_cls: type[JobConfig], description: str) -> argparse.ArgumentParser:
    """A parser whose flags are the config's fields. Values stay strings: pydantic converts and
    validates them all together, so every bad value is reported at once."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="YAML file with any of the fields below")
    for name, field in config_cls.model_fields.items():
        help_text = field.description or ""
        choices = _choices(field.annotation)
        if choices:
            help_text += f"; one of: {', '.join(map(str, choices))}"
        if not field.is_required():
            help_text += f" (default: {field.get_default()})"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = [flag_name(name), *extra.get("flags", [])]  # type: ignore[misc]
        if _is_bool(field.annotation):
            parser.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                *flags,
                dest=name,
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=help_text,
            )
    return parser


def _normalise_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def read_yaml_config(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of field: value")
    return _normalise_keys(loaded)


def env_values(config_cls: type[JobConfig], env: Mapping[str, str]) -> dict[str, Any]:
    return {
        name: env[ENV_PREFIX + name.upper()]
        for name in config_cls.model_fields
        if ENV_PREFIX + name.upper() in env
    }


def format_validation_error(exc: ValidationError) -> str:
    lines = [f"invalid configuration ({exc.error_count()} error(s)):"]
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = flag_name(field) if field else "configuration"
        got = f" (got {error['input']!r})" if field and "input" in error else ""
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}{got}")
    return "\n".join(lines)


def merge_config(
    config_cls: type[ConfigT],
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ConfigT:
    """Merge defaults < YAML < env < flags and validate; raise ConfigError naming every bad
    field."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_yaml_config(config_file))
    values.update(env_values(config_cls, os.environ if env is None else env))
    values.update(flags)
    try:
        return config_cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def parse_config(
    config_cls: type[ConfigT],
    argv: Sequence[str] | None = None,
    description: str = "",
    env: Mapping[str, str] | None = None,
) -> ConfigT:
    """Parse a job's command line; on any invalid value print every error and exit 2."""
    args = vars(build_parser(config_cls, description).parse_args(argv))
    config_file = args.pop("config", None)
    try:
        return merge_config(config_cls, args, config_file, env)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
