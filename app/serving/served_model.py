"""One loaded model with what serving reports about it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from app import model_registry, tracking
from app.inference import Predictor
from app.model_registry import ModelRef

# (channels, height, width) of the images a model takes.
Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ServedModel:
    source: ModelRef
    predictor: Predictor
    metrics: dict[str, float]
    loaded_at: str

    @classmethod
    def load(cls, source: ModelRef, device: torch.device) -> ServedModel:
        """Download, rebuild and self-test (blocking): a model that cannot predict is never
        swapped in."""
        predictor = model_registry.load_predictor(source.pinned_uri, str(device))
        metrics = dict(tracking.client().get_run(source.run_id).data.metrics)
        served = cls(source, predictor, metrics, datetime.now(UTC).isoformat(timespec="seconds"))
        served.self_test()
        return served

    @property
    def input_shape(self) -> Shape:
        spec = self.predictor.spec
        return (spec.in_channels, spec.image_size, spec.image_size)

    @property
    def ref(self) -> dict[str, str | None]:
        """Which model answered: the identity every prediction carries."""
        return {
            "name": self.source.name,
            "version": self.source.version,
            "alias": self.source.alias,
        }

    def self_test(self) -> None:
        """A tiny forward pass; raises when the model cannot predict."""
        blank = np.zeros((1, *self.input_shape), dtype=np.uint8)
        probabilities = self.predictor.serve_proba(blank)
        if (
            not bool(torch.isfinite(probabilities).all())
            or abs(probabilities.sum().item() - 1) > 1e-2
        ):
            raise RuntimeError(f"model {self.source.pinned_uri} returns invalid probabilities")

    def result(self, row: torch.Tensor, top_k: int) -> dict[str, Any]:
        """One image's probabilities as the prediction the API answers."""
        classes = self.predictor.spec.classes
        values, indices = row.topk(min(top_k, len(classes)))
        ranked = [
            {"label": classes[i], "class_index": i, "probability": p}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        best = ranked[0]
        return {
            "label": best["label"],
            "class_index": best["class_index"],
            "confidence": best["probability"],
            "top_k": ranked,
            "model": self.ref,
        }

    def describe(self) -> dict[str, Any]:
        """The model, its run and what it computes on (``GET /model`` adds the settings)."""
        spec = self.predictor.spec
        return {
            **self.ref,
            "run_id": self.source.run_id,
            "model_uri": self.source.pinned_uri,
            "metrics": self.metrics,
            "loaded_at": self.loaded_at,
            "device": str(self.predictor.device),
            "precision": str(self.predictor.serving_dtype).removeprefix("torch."),
            "architecture": spec.architecture,
            "dataset": spec.dataset,
            "classes": list(spec.classes),
            "input_shape": list(self.input_shape),
        }
