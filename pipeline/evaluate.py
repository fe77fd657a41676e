"""Evaluate the trained model on the test set; write metrics and plots; log them to train's run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import config, tracking
from pipeline.data import atomic_path, load_arrays, read_json, write_json
from pipeline.preprocess import split_path

log = logging.getLogger(__name__)

PREDICT_BATCH_SIZE = 1000
_EPSILON = 1e-7  # Keras clips probabilities the same way in its cross-entropy


def summary_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Test loss (mean softmax cross-entropy) and accuracy from predicted probabilities."""
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "test_loss": float(-np.log(np.clip(picked, _EPSILON, 1.0)).mean()),
        "test_accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
    }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predicted ones."""
    flat = labels.astype(np.int64) * n_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_metrics(confusion: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (0 where a class is never predicted)."""
    true_positives = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(
        true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0
    )
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return pd.DataFrame(
        {"class": np.arange(len(confusion)), "precision": precision, "recall": recall,
         "f1": f1, "support": actual}
    )  # fmt: skip


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path, ".csv") as temporary:
        table.to_csv(temporary, index=False, float_format="%.6g")


def log_to_run(run_id: str, metrics: dict, per_class: pd.DataFrame, confusion: np.ndarray,
               params: config.Params) -> None:  # fmt: skip
    """Add test metrics, per-class metrics and report files to the run that train started."""
    import mlflow

    tracking.use_store(params.mlflow)
    per_class_flat = {
        f"test_{column}.class_{row['class']}": float(row[column])
        for row in per_class.to_dict("records")
        for column in ("precision", "recall", "f1")
    }
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics | per_class_flat)
        mlflow.log_table(per_class, "evaluation/per_class.json")
        mlflow.log_dict({"labels": list(range(len(confusion))), "matrix": confusion.tolist()},
                        "evaluation/confusion_matrix.json")  # fmt: skip
        mlflow.log_artifact(params.paths.metrics, "evaluation")
    log.info("logged test metrics to run %s", run_id)


def run(params: config.Params) -> dict[str, float]:
    """Score the test split; write metrics.json, per-class table and confusion plot data."""
    import keras

    model = keras.saving.load_model(params.paths.model)
    test = load_arrays(split_path(params.paths.processed_dir, "test"))
    probabilities = model.predict(test["x"], batch_size=PREDICT_BATCH_SIZE, verbose=0)
    predictions = probabilities.argmax(axis=1)
    confusion = confusion_matrix(test["y"], predictions, params.model.n_classes)
    per_class = per_class_metrics(confusion)
    metrics = summary_metrics(probabilities, test["y"]) | {
        "test_macro_f1": float(per_class["f1"].mean())
    }
    write_json(params.paths.metrics, metrics)
    write_csv(per_class, params.paths.per_class)
    write_csv(pd.DataFrame({"actual": test["y"], "predicted": predictions}), params.paths.confusion)
    log.info("test accuracy %.4f, loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    log_to_run(read_json(params.paths.run_info)["run_id"], metrics, per_class, confusion, params)
    return metrics


def main(argv: list[str] | None = None) -> None:
    params = config.load_params_from_cli(argv, __doc__)
    config.setup_logging()
    run(params)


if __name__ == "__main__":
    main()
