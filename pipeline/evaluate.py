"""Evaluate the trained model on the test set; write metrics and plots; log them to train's run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow  # already loaded by tracking; TensorFlow is imported only in run()
import numpy as np
import pandas as pd

from pipeline import config, fetch, model_card, tracking
from pipeline.data import Arrays, load_arrays, read_json, write_csv, write_json, write_text
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


def write_figures(test: Arrays, predictions: np.ndarray, confusion: np.ndarray,
                  folder: Path) -> dict[str, Path]:  # fmt: skip
    """The confusion matrix and misclassified digits as PNGs (for DVC, MLflow and the card)."""
    from pipeline import figures

    drawn = {
        "confusion_matrix.png": figures.confusion_matrix(confusion),
        "misclassified.png": figures.misclassified_grid(test["x"], test["y"], predictions),
    }
    for name, figure in drawn.items():
        figures.save(figure, folder / name)
    return {name: folder / name for name in drawn}


def log_results(metrics: dict, per_class: pd.DataFrame, confusion: np.ndarray,
                pictures: dict[str, Path]) -> None:  # fmt: skip
    """Test metrics (overall and per class), tables and figures, into the active run."""
    per_class_flat = {
        f"test_{column}.class_{row['class']}": float(row[column])
        for row in per_class.to_dict("records")
        for column in ("precision", "recall", "f1")
    }
    mlflow.log_metrics(metrics | per_class_flat)
    mlflow.log_table(per_class, "evaluation/per_class.json")
    matrix = {"labels": list(range(len(confusion))), "matrix": confusion.tolist()}
    mlflow.log_dict(matrix, "evaluation/confusion_matrix.json")
    for picture in pictures.values():
        mlflow.log_artifact(str(picture), "figures")


def card_for(run, run_info: dict, champion: int | None, metrics: dict, per_class: pd.DataFrame,
             pictures: dict[str, Path], params: config.Params) -> str:  # fmt: skip
    """The model card's text, with lineage from the run's tags."""
    lineage = model_card.Lineage(
        git_commit=run.data.tags.get("git_commit", "unknown"),
        dvc_experiment=run.data.tags.get("dvc.exp_name", "none (plain dvc repro)"),
        run_id=run.info.run_id,
        registered_model=params.mlflow.registered_model,
        registered_version=run_info["registered_version"],
        champion_version=champion,
    )
    card_dir = Path(params.paths.model_card).parent
    figure_links = [os.path.relpath(pictures[name], card_dir) for name in pictures]
    manifest = read_json(fetch.manifest_path(params.paths.raw_dir))
    return model_card.render(params, manifest, metrics, per_class, lineage, *figure_links)


def log_to_run(run_info: dict, metrics: dict, per_class: pd.DataFrame, confusion: np.ndarray,
               pictures: dict[str, Path], params: config.Params) -> None:  # fmt: skip
    """Log test results into train's run, promote the champion, write and log the model card."""
    tracking.use_store(params.mlflow)
    run = mlflow.start_run(run_id=run_info["run_id"])
    try:
        log_results(metrics, per_class, confusion, pictures)
        champion = tracking.promote_champion(params.mlflow.registered_model)
        card = card_for(run, run_info, champion, metrics, per_class, pictures, params)
        write_text(params.paths.model_card, card)
        mlflow.log_artifact(params.paths.model_card)
    except BaseException:
        mlflow.set_tag("evaluate.status", "failed")
        raise
    finally:
        mlflow.end_run()  # FINISHED, as training did; a failed evaluation is tagged instead
    log.info("logged test results and model card to run %s", run_info["run_id"])


def run(params: config.Params) -> dict[str, float]:
    """Score the test split; write metrics, plots, figures and the model card; log them."""
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
    pictures = write_figures(test, predictions, confusion, Path(params.paths.figures_dir))
    log.info("test accuracy %.4f, loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    log_to_run(read_json(params.paths.run_info), metrics, per_class, confusion, pictures, params)
    return metrics


def main(argv: list[str] | None = None) -> None:
    config.run_stage(run, argv, __doc__, expected=(tracking.TrackingError,))


if __name__ == "__main__":
    main()
