"""One loaded model, refused at load unless it can answer requests, with what serving reports
about it: to clients (``describe``) and to the replica's log (``internals``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from app import model_registry, tracking
from app.inference import Predictor
from app.model_registry import ModelRef
from app.models import ModelSpec
from app.preprocessing import SUPPORTED_CHANNELS
from app.serving.schemas import Lineage

# (channels, height, width) of the images a model takes.
Shape = tuple[int, int, int]
# The largest input side a served model may declare: every request's image is resized to it.
MAX_IMAGE_SIZE = 1024


# What /model tells of a model's making (ids, digests, the commit; no storage location).
LINEAGE_FIELDS = tuple(Lineage.model_fields)


class UnservableModelError(RuntimeError):
    """The model cannot answer requests: refused when loaded, never swapped in."""


def spec_problems(spec: ModelSpec) -> list[str]:
    """What in ``spec`` no request could get past (the decoder, the class list); [] when none."""
    problems = []
    if spec.in_channels not in SUPPORTED_CHANNELS:
        problems.append(f"in_channels is {spec.in_channels}, images decode to {SUPPORTED_CHANNELS}")
    if not 1 <= spec.image_size <= MAX_IMAGE_SIZE:
        problems.append(f"image_size is {spec.image_size}, not within 1..{MAX_IMAGE_SIZE}")
    if not spec.classes or spec.num_classes != len(spec.classes):
        problems.append(f"num_classes is {spec.num_classes} for {len(spec.classes)} class names")
    if not len(spec.mean) == len(spec.std) == spec.in_channels:
        problems.append(f"mean and std have {len(spec.mean)} and {len(spec.std)} values")
    if not all(math.isfinite(m) for m in spec.mean) or not all(
        math.isfinite(s) and s > 0 for s in spec.std
    ):
        problems.append("mean must be finite and std finite and positive")
    return problems


@dataclass(frozen=True)
class ServedModel:
    source: ModelRef
    predictor: Predictor
    metrics: dict[str, float]
    loaded_at: str
    # run -> sweep -> dataset digest -> commit, and the run's cost (model_registry.lineage)
    lineage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, source: ModelRef, device: torch.device) -> ServedModel:
        """Download, rebuild and validate (blocking): a model that cannot serve is never
        swapped in."""
        predictor = model_registry.load_predictor(source.pinned_uri, str(device))
        run = tracking.client().get_run(source.run_id)
        served = cls(
            source,
            predictor,
            dict(run.data.metrics),
            datetime.now(UTC).isoformat(timespec="seconds"),
            model_registry.lineage(source, run),
        )
        served.validate()
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

    def validate(self) -> None:
        """Raises ``UnservableModelError`` unless the spec is one requests can reach and the
        model passes its self-test."""
        problems = spec_problems(self.predictor.spec)
        if problems:
            raise UnservableModelError(
                f"model {self.source.pinned_uri} cannot be served: {'; '.join(problems)}"
            )
        self.self_test()

    def self_test(self) -> None:
        """A forward pass on a blank image of the input shape, checked like an answer: one
        finite probability per class, summing to 1. Raises ``UnservableModelError``."""
        uri = self.source.pinned_uri
        blank = np.zeros((1, *self.input_shape), dtype=np.uint8)
        try:
            probabilities = self.predictor.serve_proba(blank)
        except Exception as exc:  # whatever stops the forward pass, the model cannot serve
            raise UnservableModelError(f"model {uri} cannot predict: {exc!r}") from exc
        expected = (1, len(self.predictor.spec.classes))
        if tuple(probabilities.shape) != expected:
            raise UnservableModelError(
                f"model {uri} returns {tuple(probabilities.shape)} probabilities, not {expected}"
            )
        if (
            not bool(torch.isfinite(probabilities).all())
            or abs(probabilities.sum().item() - 1) > 1e-2
        ):
            raise UnservableModelError(f"model {uri} returns invalid probabilities")

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
        """What a client needs: which model answers, the images it takes, the classes it
        ranks, when it was loaded, and what it was made from."""
        spec = self.predictor.spec
        return {
            **self.ref,
            "dataset": spec.dataset,
            "classes": list(spec.classes),
            "input_shape": list(self.input_shape),
            "loaded_at": self.loaded_at,
            "lineage": {k: self.lineage.get(k) for k in LINEAGE_FIELDS},
        }

    def internals(self) -> dict[str, Any]:
        """For the replica's log, never for clients: where the model is stored, its run and
        metrics, what it computes on."""
        return {
            "run_id": self.source.run_id,
            "model_uri": self.source.pinned_uri,
            "metrics": self.metrics,
            "device": str(self.predictor.device),
            "precision": str(self.predictor.serving_dtype).removeprefix("torch."),
            "architecture": self.predictor.spec.architecture,
        }
