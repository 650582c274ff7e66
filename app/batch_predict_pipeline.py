"""The Ray Data pipeline of bulk scoring: file bytes -> bounded decoding -> the model, loaded
once per actor of a pool -> rows with the top-k classes (or an error) -> Parquet.

The driver downloads the model once and ships its two files (safetensors weights, JSON spec)
through the object store: the actors neither call MLflow nor unpickle anything, and all of
them score with exactly the version the driver resolved, wherever the alias moves meanwhile."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from app.inference import SPEC_FILE, WEIGHTS_FILE, Predictor
from app.preprocessing import InputError, Limits, decode_image, open_image

TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float32())]))
OUTPUT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("class_index", pa.int32()),
        ("confidence", pa.float32()),
        ("top_k", TOP_K_TYPE),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class ModelFiles:
    """A saved model as bytes, to rebuild a ``Predictor`` wherever it is needed."""

    weights: bytes
    spec: str

    @classmethod
    def from_folder(cls, folder: Path) -> ModelFiles:
        return cls((folder / WEIGHTS_FILE).read_bytes(), (folder / SPEC_FILE).read_text())

    def predictor(self, device: str = "cpu") -> Predictor:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / WEIGHTS_FILE).write_bytes(self.weights)
            (folder / SPEC_FILE).write_text(self.spec)
            return Predictor.from_folder(folder, device)


@dataclass(frozen=True)
class ScoringOptions:
    top_k: int
    model_name: str | None
    model_version: str | None
    uri_scheme: str  # "s3" turns Ray's bucket/key paths back into s3:// URIs
    limits: Limits = field(default_factory=Limits)


def error_table(rows: list[tuple[str, str]], options: ScoringOptions, uri: bool = True) -> pa.Table:
    """Rows for files that were not scored: (path, error)."""
    paths = [_uri(p, options.uri_scheme) if uri else p for p, _ in rows]
    n = len(rows)
    return pa.Table.from_pydict(
        {
            "path": paths,
            "label": [None] * n,
            "class_index": [None] * n,
            "confidence": [None] * n,
            "top_k": [None] * n,
            "model_name": [options.model_name] * n,
            "model_version": [options.model_version] * n,
            "error": [e for _, e in rows],
        },
        schema=OUTPUT_SCHEMA,
    )


def _uri(path: str, scheme: str) -> str:
    return f"{scheme}://{path}" if scheme and not path.startswith(f"{scheme}://") else path


def decode_batch(
    blobs: list[bytes], size: int, channels: int, limits: Limits
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode what can be decoded: (uint8 (N, C, H, W), their indices, index -> error)."""
    images: list[np.ndarray] = []
    good: list[int] = []
    errors: dict[int, str] = {}
    for index, data in enumerate(blobs):
        try:
            image = open_image(bytes(data), size, channels, limits)
            images.append(decode_image(image, size, channels))
            good.append(index)
        except InputError as exc:
            errors[index] = f"{exc.code}: {exc.detail}"
        except Exception as exc:  # a decoder bug must cost one row, not the whole job
            errors[index] = f"decode_failed: {type(exc).__name__}: {exc}"
    stacked = np.stack(images) if images else np.zeros((0, channels, size, size), dtype=np.uint8)
    return stacked, good, errors


def score_rows(
    predictor: Predictor, paths: list[str], blobs: list[bytes], options: ScoringOptions
) -> pa.Table:
    """One batch of files -> one output row each (scored, or with its error)."""
    spec = predictor.spec
    images, good, errors = decode_batch(blobs, spec.image_size, spec.in_channels, options.limits)
    n, k = len(paths), min(options.top_k, len(spec.classes))
    labels: list[str | None] = [None] * n
    indices: list[int | None] = [None] * n
    confidences: list[float | None] = [None] * n
    top: list[list[dict[str, Any]] | None] = [None] * n
    if good:
        probabilities = predictor.predict_proba(images).float().cpu()
        values, classes = probabilities.topk(k, dim=1)
        for row, index in enumerate(good):
            picked = classes[row].tolist()
            scores = values[row].tolist()
            labels[index] = spec.classes[picked[0]]
            indices[index] = picked[0]
            confidences[index] = scores[0]
            top[index] = [
                {"label": spec.classes[c], "probability": p}
                for c, p in zip(picked, scores, strict=True)
            ]
    return pa.Table.from_pydict(
        {
            "path": [_uri(p, options.uri_scheme) for p in paths],
            "label": labels,
            "class_index": indices,
            "confidence": confidences,
            "top_k": top,
            "model_name": [options.model_name] * n,
            "model_version": [options.model_version] * n,
            "error": [errors.get(i) for i in range(n)],
        },
        schema=OUTPUT_SCHEMA,
    )


class ImageScorer:
    """The callable class of ``map_batches``: one model per actor, rebuilt in ``__init__``."""

    def __init__(
        self, model: tuple[Any, ...] | ModelFiles, options: ScoringOptions, device: str
    ) -> None:
        import ray

        # The shared copy's ref, inside a tuple: Ray Data passes constructor arguments on as
        # given, and a top-level ref would be warned about on every actor of the pool.
        files: ModelFiles = ray.get(model[0]) if isinstance(model, tuple) else model
        self.predictor = files.predictor(device)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return score_rows(
            self.predictor, [str(p) for p in batch["path"]], list(batch["bytes"]), self.options
        )


@dataclass(frozen=True)
class Resources:
    """How the actor pool is placed: one GPU per actor when the cluster has GPUs."""

    actors: int
    num_gpus: float
    num_cpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus else "cpu"

    @classmethod
    def of_cluster(cls, max_actors: int | None = None) -> Resources:
        """Sized from what the cluster can grow to (the autoscaler's worker groups, declared in
        RAYVISION_AUTOSCALER_NODE_TYPES on KubeRay), not only the nodes up now: GPU workers that
        rest at zero still get the scoring actors, the pool growing as they come up."""
        import os

        from app.tune.plan import NODE_TYPES_ENV, cluster_capacity, parse_node_types

        declared = os.environ.get(NODE_TYPES_ENV)
        capacity = cluster_capacity(parse_node_types(declared) if declared else ())
        gpus, cpus = int(capacity.gpus), capacity.cpus
        if gpus:
            return cls(min(gpus, max_actors or gpus), 1.0, 1.0)
        # Leave a CPU's worth for the read and write tasks, which feed the actors.
        actors = max(1, int(cpus) - 1) if cpus >= 3 else max(1, int(cpus))
        return cls(min(actors, max_actors or actors), 0.0, 1.0)


def run_pipeline(
    inputs_filesystem: pafs.FileSystem,
    paths: list[str],
    extra_rows: pa.Table | None,
    model: ModelFiles,
    options: ScoringOptions,
    output_filesystem: pafs.FileSystem,
    output_path: str,
    batch_size: int,
    resources: Resources,
) -> None:
    """Read ``paths``, score them on an actor pool, write Parquet under ``output_path``."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = True
    datasets = []
    if paths:
        read = ray.data.read_binary_files(
            paths,
            include_paths=True,
            filesystem=inputs_filesystem,
            # Small tasks: the actors, not the reads, should hold the CPUs.
            num_cpus=0.25 if not resources.num_gpus else 0.5,
            # About a batch a block: Ray's default (a block per file below ~200 files) costs a
            # task per image.
            override_num_blocks=max(1, math.ceil(len(paths) / batch_size)),
        )
        model_ref = ray.put(model)
        datasets.append(
            read.map_batches(
                ImageScorer,
                fn_constructor_args=((model_ref,), options, resources.device),
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=resources.actors),
                num_gpus=resources.num_gpus or None,
                num_cpus=resources.num_cpus,
            )
        )
    if extra_rows is not None and extra_rows.num_rows:
        datasets.append(ray.data.from_arrow(extra_rows))
    dataset = datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
    dataset.write_parquet(output_path, filesystem=output_filesystem)


@dataclass
class OutputSummary:
    rows: int
    scored: int
    unreadable: list[tuple[str, str]]


def summarize_output(filesystem: pafs.FileSystem, path: str) -> OutputSummary:
    """What the written Parquet holds: rows, scored rows, (path, error) of the others."""
    table = pads.dataset(path, filesystem=filesystem, format="parquet").to_table(
        columns=["path", "error"]
    )
    errors = table.filter(pc.is_valid(table["error"]))
    unreadable = sorted(zip(errors["path"].to_pylist(), errors["error"].to_pylist(), strict=True))
    return OutputSummary(table.num_rows, table.num_rows - len(unreadable), unreadable)
