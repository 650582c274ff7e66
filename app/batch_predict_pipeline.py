"""The Ray Data pipeline of bulk scoring: paths -> one actor stage that reads the files
(threads, so S3 latency overlaps), decodes them with bounds and runs the model, loaded once per
actor of a pool -> rows with the top-k classes (or an error) -> Parquet.

One stage, not Ray Data's read tasks feeding the actors: read tasks cannot fuse into an actor
pool that asks for other resources, and as a separate stage they took CPU from the scoring
actors on small machines (measured in BENCHMARKS.md).

The driver downloads the model once and ships its two files (safetensors weights, JSON spec)
through the object store: the actors neither call MLflow nor unpickle anything, and all of
them score with exactly the version the driver resolved, wherever the alias moves meanwhile."""

from __future__ import annotations

import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
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


READ_THREADS = 16  # files fetched at once per actor: hides object-store latency, not CPU


def read_file(filesystem: pafs.FileSystem, path: str, max_bytes: int) -> bytes | str:
    """The file's bytes, or why they could not be read (listed files can vanish or grow)."""
    try:
        with filesystem.open_input_stream(path) as stream:
            data = stream.read(max_bytes + 1)
    except (OSError, ValueError) as exc:
        return f"not_readable: {type(exc).__name__}: {exc}"
    if len(data) > max_bytes:
        return f"too_large: over {max_bytes} bytes"
    return bytes(data)


def decode_batch(
    blobs: list[bytes | str], size: int, channels: int, limits: Limits
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode what can be decoded: (uint8 (N, C, H, W), their indices, index -> error).
    A ``str`` among ``blobs`` is a file that could not be read: its error."""
    images: list[np.ndarray] = []
    good: list[int] = []
    errors: dict[int, str] = {}
    for index, data in enumerate(blobs):
        if isinstance(data, str):
            errors[index] = data
            continue
        try:
            image = open_image(data, size, channels, limits)
            images.append(decode_image(image, size, channels))
            good.append(index)
        except InputError as exc:
            errors[index] = f"{exc.code}: {exc.detail}"
        except Exception as exc:  # a decoder bug must cost one row, not the whole job
            errors[index] = f"decode_failed: {type(exc).__name__}: {exc}"
    stacked = np.stack(images) if images else np.zeros((0, channels, size, size), dtype=np.uint8)
    return stacked, good, errors


def score_rows(
    predictor: Predictor, paths: list[str], blobs: list[bytes | str], options: ScoringOptions
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
    """The callable class of ``map_batches``: one model per actor, rebuilt in ``__init__``;
    each call reads its batch of paths, then scores it."""

    def __init__(
        self,
        model: tuple[Any, ...] | ModelFiles,
        options: ScoringOptions,
        device: str,
        filesystem: pafs.FileSystem,
    ) -> None:
        if isinstance(model, tuple):
            import ray

            # The shared copy's ref, inside a tuple: Ray Data passes constructor arguments on
            # as given, and a top-level ref would be warned about on every actor of the pool.
            files: ModelFiles = ray.get(model[0])
        else:
            files = model
        self.predictor = files.predictor(device)
        self.options = options
        self.filesystem = filesystem
        self.readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="read")

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        max_bytes = self.options.limits.max_bytes
        blobs = list(self.readers.map(lambda p: read_file(self.filesystem, p, max_bytes), paths))
        return score_rows(self.predictor, paths, blobs, self.options)


@dataclass(frozen=True)
class Resources:
    """How the actor pool is placed: one GPU per actor when the cluster has GPUs."""

    actors: int
    num_gpus: float
    num_cpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus else "cpu"

    @property
    def min_actors(self) -> int:
        """GPU pools start with one actor and grow as GPU workers come up (they may rest at
        zero); CPU pools start whole: grown one by one, the last actor started seconds late."""
        return 1 if self.num_gpus else self.actors

    @classmethod
    def of_cluster(cls, max_actors: int | None = None) -> Resources:
        """Sized from what the cluster can grow to (the autoscaler's worker groups, declared in
        RAYVISION_AUTOSCALER_NODE_TYPES on KubeRay), not only the nodes up now: GPU workers that
        rest at zero still get the scoring actors, the pool growing as they come up."""
        import os

        from app.tune.plan import NODE_TYPES_ENV, cluster_capacity, parse_node_types

        declared = os.environ.get(NODE_TYPES_ENV)
        capacity = cluster_capacity(parse_node_types(declared) if declared else ())
        return cls.for_capacity(capacity.cpus, capacity.gpus, max_actors)

    @classmethod
    def for_capacity(cls, cpus: float, gpus: float, max_actors: int | None = None) -> Resources:
        if int(gpus):
            return cls(min(int(gpus), max_actors or int(gpus)), 1.0, 1.0)
        # One actor per CPU: each reads, decodes and scores (torch on one thread, as Ray sets
        # OMP_NUM_THREADS to an actor's CPUs); the Parquet writes need no CPU of their own.
        actors = max(1, int(cpus))
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
        listed = ray.data.from_items(
            [{"path": path} for path in paths],
            # About a batch a block, so that every actor of the pool has blocks to take.
            override_num_blocks=max(1, math.ceil(len(paths) / batch_size)),
        )
        model_ref = ray.put(model)
        datasets.append(
            listed.map_batches(
                ImageScorer,
                fn_constructor_args=((model_ref,), options, resources.device, inputs_filesystem),
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(
                    min_size=resources.min_actors, max_size=resources.actors
                ),
                num_gpus=resources.num_gpus or None,
                num_cpus=resources.num_cpus,
            )
        )
    if extra_rows is not None and extra_rows.num_rows:
        datasets.append(ray.data.from_arrow(extra_rows))
    dataset = datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
    # Writing scored rows is light: zero CPUs, so it never waits behind actors holding them all.
    dataset.write_parquet(
        output_path, filesystem=output_filesystem, ray_remote_args={"num_cpus": 0}
    )


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
