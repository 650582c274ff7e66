"""Scoring a model on a labelled split: accuracy, per-class precision / recall / F1, confusion
matrix, and the figures that go to MLflow (confusion matrix, learning curve, hardest errors)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from app.datasets import DatasetInfo, normalize

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PER_CLASS_TABLE = "per_class_metrics.json"


@dataclass
class ClassScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class EvalReport:
    accuracy: float
    macro_f1: float
    per_class: list[ClassScore]
    confusion: np.ndarray  # rows: true class, columns: predicted class

    def summary(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": [score.__dict__ for score in self.per_class],
        }

    def table(self) -> dict[str, list[Any]]:
        """Column-oriented per-class table, the shape ``mlflow.log_table`` takes."""
        return {
            "class": [s.label for s in self.per_class],
            "precision": [s.precision for s in self.per_class],
            "recall": [s.recall for s in self.per_class],
            "f1": [s.f1 for s in self.per_class],
            "support": [s.support for s in self.per_class],
        }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> EvalReport:
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    per_class = [
        ClassScore(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(classes, precision, recall, f1, actual, strict=True)
    ]
    present = actual > 0
    return EvalReport(
        accuracy=float(true_positive.sum() / max(len(y_true), 1)),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class=per_class,
        confusion=matrix,
    )


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    info: DatasetInfo,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities for uint8 (N, C, H, W) images, always in eval mode."""
    device = device or next(model.parameters()).device
    model.eval()
    outputs = [
        torch.softmax(model(normalize(batch.to(device), info)).float(), dim=1).cpu()
        for batch in torch.split(images, batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, info.num_classes)


def evaluate_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo
) -> tuple[EvalReport, torch.Tensor]:
    probabilities = predict_proba(model, images, info)
    report = score(labels.numpy(), probabilities.argmax(1).numpy(), info.classes)
    return report, probabilities


# ---------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), dpi=100)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion_matrix(report: EvalReport, classes: tuple[str, ...], path: Path) -> Path:
    size = min(4 + 0.4 * len(classes), 24)
    fig = _figure(size, size)
    ax = fig.add_subplot()
    ax.imshow(report.confusion, cmap="Blues")
    if len(classes) <= 20:
        ax.set_xticks(range(len(classes)), classes, rotation=90)
        ax.set_yticks(range(len(classes)), classes)
        for (row, col), count in np.ndenumerate(report.confusion):
            if count:
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {report.accuracy:.3f})")
    return _save(fig, path)


def plot_learning_curve(history: list[dict[str, float]], path: Path) -> Path:
    fig = _figure(9, 3.5)
    epochs = [h["epoch"] for h in history]
    loss_ax, acc_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for split in ("train", "val"):
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        acc_ax.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    loss_ax.legend()
    acc_ax.legend()
    return _save(fig, path)


def plot_hardest_errors(
    images: torch.Tensor,
    labels: torch.Tensor,
    probabilities: torch.Tensor,
    classes: tuple[str, ...],
    path: Path,
    count: int = 16,
) -> Path:
    """The misclassified images the model was most confident about, with true / predicted."""
    predicted = probabilities.argmax(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    confidence = probabilities[wrong, predicted[wrong]]
    hardest = wrong[confidence.argsort(descending=True)][:count]
    columns = 4
    rows = max(1, -(-len(hardest) // columns))
    fig = _figure(2.2 * columns, 2.4 * rows)
    for slot, index in enumerate(hardest.tolist()):
        ax = fig.add_subplot(rows, columns, slot + 1)
        image = images[index].permute(1, 2, 0).numpy()
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(
            f"true {classes[labels[index]]}\npred {classes[predicted[index]]} "
            f"({probabilities[index, predicted[index]]:.2f})",
            fontsize=7,
        )
        ax.axis("off")
    if not len(hardest):
        fig.text(0.5, 0.5, "no misclassified images", ha="center")
    return _save(fig, path)


def log_evaluation(
    client: MlflowClient,
    run_id: str,
    report: EvalReport,
    probabilities: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    artifact_path: str | None = None,
    history: list[dict[str, float]] | None = None,
) -> None:
    """Log one scored split to a run: the confusion matrix, the hardest errors, the learning
    curve when a training ``history`` is given, and the per-class table."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = [
            plot_confusion_matrix(report, classes, folder / "confusion_matrix.png"),
            plot_hardest_errors(
                images, labels, probabilities, classes, folder / "hardest_errors.png"
            ),
        ]
        if history:
            figures.append(plot_learning_curve(history, folder / "learning_curve.png"))
        for figure in figures:
            client.log_artifact(run_id, str(figure), artifact_path)
    table = f"{artifact_path}/{PER_CLASS_TABLE}" if artifact_path else PER_CLASS_TABLE
    client.log_table(run_id, report.table(), table)
