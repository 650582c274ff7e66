"""The data a run was made from, as an MLflow dataset input: the dataset's name, the digest of
its arrays (``ImageSplits.fingerprint``), where its files come from and the size of each split,
so the MLflow UI and ``app.lineage`` show the same facts the run's tags hold."""

from __future__ import annotations

import json

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag

from app import tracking
from app.datasets import ImageSplits, get_dataset

DIGEST_CHARS = 36  # MLflow's limit on a dataset digest; the fingerprint's first 144 bits
CONTEXT_TAG = "mlflow.data.context"


def digest(splits: ImageSplits) -> str:
    return splits.fingerprint[:DIGEST_CHARS]


def _source(dataset: str, splits: ImageSplits | None = None) -> DatasetSource:
    if splits is not None and splits.source_uri is not None:  # image-folder: the folder's URI
        return resolve_dataset_source(splits.source_uri)  # its type: local or s3
    found = get_dataset(dataset)
    if found.source is not None:
        url = found.source.files[0].url
        return HTTPDatasetSource(url.rsplit("/", 1)[0] + "/")
    return CodeDatasetSource({"dataset": dataset, "summary": found.summary})


def dataset_input(dataset: str, splits: ImageSplits, context: str) -> DatasetInput:
    source = _source(dataset, splits)
    profile = {
        "train": len(splits.y_train),
        "val": len(splits.y_val),
        "test": len(splits.y_test),
        "classes": splits.info.num_classes,
        "image": [splits.info.channels, splits.info.image_size, splits.info.image_size],
        "fingerprint_sha256": splits.fingerprint,
    }
    entity = Dataset(
        name=dataset,
        digest=digest(splits),
        source_type=source._get_source_type(),
        source=source.to_json(),
        profile=json.dumps(profile),
    )
    return DatasetInput(entity, tags=[InputTag(CONTEXT_TAG, context)])


def log_dataset(run_id: str, dataset: str, splits: ImageSplits, context: str = "training") -> None:
    """Log the dataset as the run's input (once per run: MLflow keeps one per digest)."""
    entry = dataset_input(dataset, splits, context)
    tracking.retrying(
        lambda: tracking.client().log_inputs(run_id, datasets=[entry]), "logging the dataset"
    )
