from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support

from app.datasets import dataset_info
from app.evaluation import (
    plot_confusion_matrix,
    plot_hardest_errors,
    plot_learning_curve,
    score,
)


def test_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 5, 300))
    report = score(y_true, y_pred, tuple("abcde"))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred)
    assert report.accuracy == np.mean(y_true == y_pred)
    assert np.allclose([s.precision for s in report.per_class], precision)
    assert np.allclose([s.recall for s in report.per_class], recall)
    assert np.allclose([s.f1 for s in report.per_class], f1)
    assert [s.support for s in report.per_class] == support.tolist()
    assert np.isclose(report.macro_f1, f1_score(y_true, y_pred, average="macro"))
    assert report.confusion.sum() == 300 and np.trace(report.confusion) == (y_true == y_pred).sum()


def test_class_never_predicted_scores_zero_not_nan() -> None:
    report = score(np.array([0, 1, 1]), np.array([1, 1, 1]), ("a", "b"))
    assert report.per_class[0].precision == 0.0 and report.per_class[0].f1 == 0.0
    assert report.table()["class"] == ["a", "b"]


def test_figures_are_written_as_png(tmp_path: Path) -> None:
    info = dataset_info("digits")
    labels = torch.tensor([0, 1, 2, 3])
    probabilities = torch.eye(10)[[0, 2, 2, 1]]
    report = score(labels.numpy(), probabilities.argmax(1).numpy(), info.classes)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1 / e,
            "train_accuracy": 0.5,
            "val_accuracy": 0.5,
        }
        for e in (1, 2)
    ]
    for path in (
        plot_confusion_matrix(report, info.classes, tmp_path / "cm.png"),
        plot_learning_curve(history, tmp_path / "lc.png"),
        plot_hardest_errors(images, labels, probabilities, info.classes, tmp_path / "err.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
