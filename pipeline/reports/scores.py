"""Scores from predicted probabilities: loss, accuracy, confusion matrix, per-class F1 (NumPy)."""

from __future__ import annotations

import numpy as np
import pandas as pd

_EPSILON = 1e-7  # Keras clips probabilities the same way in its cross-entropy


def summary_metrics(
    probabilities: np.ndarray, labels: np.ndarray, split: str = "test"
) -> dict[str, float]:
    """A split's loss (mean softmax cross-entropy) and accuracy from predicted probabilities,
    keyed `<split>_loss`, `<split>_accuracy`."""
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        f"{split}_loss": float(-np.log(np.clip(picked, _EPSILON, 1.0)).mean()),
        f"{split}_accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
    }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predicted ones."""
    flat = labels.astype(np.int64) * n_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_metrics(confusion: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (0 where a class is never predicted)."""
    true_positives = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(
        true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0
    )
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    scores = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return pd.DataFrame({"class": class_names} | scores)
