"""MLflow "model from code" for the project's classifiers.

MLflow stores this file (not a pickle) with the model; ``mlflow.pyfunc.load_model(uri)`` runs
it, and it rebuilds the network from ``app`` (shipped in the model's code/) and the
safetensors weights. Input: uint8 images shaped (N, H, W) or (N, H, W, C). Output: one row per
image with the predicted label, its class index and the model's confidence.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from app.inference import Predictor


class ImageClassifierModel(PythonModel):
    classifier: Predictor

    def load_context(self, context: PythonModelContext) -> None:
        self.classifier = Predictor.from_files(
            Path(context.artifacts["weights"]), Path(context.artifacts["spec"]), "cpu"
        )

    # No type hints on predict's inputs: MLflow would try to derive a schema from them; the
    # signature logged with the model (uint8 image tensor in, label table out) is the contract.
    def predict(self, context, model_input, params=None):
        probabilities = self.classifier.predict_proba(model_input)
        confidence, index = probabilities.max(dim=1)
        classes = self.classifier.spec.classes
        return pd.DataFrame(
            {
                "label": [classes[i] for i in index.tolist()],
                "class_index": index.numpy().astype("int64"),
                "confidence": confidence.numpy().astype("float64"),
            }
        )


mlflow.models.set_model(ImageClassifierModel())
