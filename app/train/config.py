"""The training job's configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.config import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    DatasetName,
    DatasetOptions,
    Experiment,
    ModelName,
)

# Default batch sizes, and the learning rate that goes with CPU_BATCH_SIZE images per step.
CPU_BATCH_SIZE = 64
GPU_BATCH_PER_WORKER = 256
BASE_LR = 0.05


class TrainConfig(DatasetOptions):
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
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of train held out for val")
    experiment: Experiment = "image-classification"
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
    # Counted apart from max_failures: Ray Train charges a worker lost to a drained spot node
    # (RayActorError.preempted) here, so spot churn does not use up the budget for real errors.
    max_preemption_failures: int = Field(
        10, ge=-1, le=1000, description="restarts after spot preemptions, -1 for unlimited"
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
