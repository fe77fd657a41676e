"""Evaluate the trained model on the test set; write metrics and plots; log them to train's run.

The model scored is the one train logged to its MLflow run (the ONNX network, through its
pyfunc), loaded from the store as a user loads it: the metrics are those of the artifact that
is registered and served. No TensorFlow is imported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

import pipeline.model.cache as model_cache
import pipeline.params.config as config
import pipeline.reports.card as model_card
import pipeline.reports.scores as scoring
import pipeline.runtime.cli as stage
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.data.files import Arrays, load_arrays, read_json, write_csv, write_json, write_text

log = logging.getLogger(__name__)


def write_figures(
    test: Arrays,
    predictions: np.ndarray,
    confusion: np.ndarray,
    data: config.DataParams,
    folder: Path,
) -> dict[str, Path]:
    """The confusion matrix and misclassified images as PNGs (for DVC, MLflow and the card)."""
    import pipeline.reports.figures as figures

    drawn = {
        "confusion_matrix.png": figures.confusion_matrix(confusion, data.class_names),
        "misclassified.png": figures.misclassified_grid(
            test["x"], test["y"], predictions, data.class_names, data.name
        ),
    }
    for name, figure in drawn.items():
        figures.save(figure, folder / name)
    return {name: folder / name for name in drawn}


def metric_safe(name: str) -> str:
    """A class name as MLflow accepts it in a metric key (letters, digits, _ - . / and space)."""
    return re.sub(r"[^\w\-. /]", "_", name)


@dataclass(frozen=True)
class Evaluation:
    """What the stage measured on the test split, and the figures it drew of it."""

    metrics: dict[str, float]  # test_accuracy, test_loss, test_macro_f1
    per_class: pd.DataFrame  # class, precision, recall, f1, support
    confusion: np.ndarray  # (true class, predicted class) counts
    pictures: dict[str, Path]  # figure file name → its path


def log_results(results: Evaluation) -> None:
    """Test metrics (overall and per class), tables and figures, into the active run.

    Per-class metrics are keyed `test_f1/<class>`: MLflow's UI groups charts into sections by
    the prefix before a `/`, so they sit in sections of their own after the training curves and
    the headline test metrics."""
    per_class = results.per_class
    per_class_flat = {
        f"test_{column}/{metric_safe(row['class'])}": float(row[column])
        for row in per_class.to_dict("records")
        for column in ("precision", "recall", "f1")
    }
    mlflow.log_metrics(results.metrics | per_class_flat)
    mlflow.log_table(per_class, "evaluation/per_class.json")
    matrix = {"labels": per_class["class"].tolist(), "matrix": results.confusion.tolist()}
    mlflow.log_dict(matrix, "evaluation/confusion_matrix.json")
    for picture in results.pictures.values():
        mlflow.log_artifact(str(picture), "figures")


def card_for(
    run, run_info: dict, champion: int | None, results: Evaluation, params: config.Params
) -> str:
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
    links = [os.path.relpath(results.pictures[name], card_dir) for name in results.pictures]
    manifest = read_json(params.paths.raw_manifest)
    scores = (results.metrics, results.per_class)
    return model_card.render(params, manifest, scores, lineage, model_card.Figures(*links))


def log_to_run(run_info: dict, results: Evaluation, params: config.Params) -> int | None:
    """Log test results into train's run, promote the champion, write and log the model card;
    the champion's version (None while there is none)."""
    with tracking.server_lost_as_error():
        run = mlflow.start_run(run_id=run_info["run_id"])
        try:
            log_results(results)
            if params.mlflow.registration == "better":  # train logged the model, unregistered
                run_info = run_info | {
                    "registered_version": registry.register_if_better(
                        params.mlflow.registered_model,
                        run_info["model_uri"],
                        results.metrics[registry.CHAMPION_METRIC],
                    )
                }
            champion = registry.promote_champion(params.mlflow.registered_model)
            write_text(params.paths.model_card, card_for(run, run_info, champion, results, params))
            mlflow.log_artifact(params.paths.model_card)
        except BaseException:
            with contextlib.suppress(Exception):  # a server that is gone cannot take the tag
                mlflow.set_tag("evaluate.status", "failed")
            raise
        finally:
            mlflow.end_run()  # FINISHED, as training did; a failed evaluation is tagged instead
    log.info("logged test results and model card to run %s", run_info["run_id"])
    return champion


def logged_model_probabilities(model_uri: str, images: np.ndarray) -> np.ndarray:
    """Class probabilities from the model train logged, loaded through MLflow's pyfunc."""
    with tracking.server_lost_as_error():
        # No requirements check: train logged them from this same environment, and MLflow's
        # check maps every installed distribution to its modules first, which takes seconds.
        model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    log.info("scoring the logged model %s on %d test images", model_uri, len(images))
    return np.asarray(model.predict(images))


def run(params: config.Params) -> dict[str, float]:
    """Score the test split; write metrics, plots, figures and the model card; log them."""
    run_info = read_json(params.paths.run_info)
    tracking.use_store(params.mlflow)
    test = load_arrays(params.paths.split("test"))
    probabilities = logged_model_probabilities(run_info["model_uri"], test["x"])
    predictions = probabilities.argmax(axis=1)
    confusion = scoring.confusion_matrix(test["y"], predictions, params.model.n_classes)
    per_class = scoring.per_class_metrics(confusion, params.data.class_names)
    metrics = scoring.summary_metrics(probabilities, test["y"]) | {
        "test_macro_f1": float(per_class["f1"].mean())
    }
    write_json(params.paths.metrics, metrics)
    write_csv(per_class, params.paths.per_class)
    names = np.asarray(params.data.class_names)
    write_csv(
        pd.DataFrame({"actual": names[test["y"]], "predicted": names[predictions]}),
        params.paths.confusion,
    )
    pictures = write_figures(
        test, predictions, confusion, params.data, Path(params.paths.figures_dir)
    )
    log.info("test accuracy %.4f, loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    champion = log_to_run(run_info, Evaluation(metrics, per_class, confusion, pictures), params)
    if champion is not None:  # the store is written for good now: the servers' copy of the
        # champion, made while MLflow is loaded here, spares their next start MLflow's start-up
        model_cache.prepare(registry.champion_uri(params.mlflow.registered_model), params)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage.run_stage(run, argv, __doc__, expected=(tracking.TrackingError,))


if __name__ == "__main__":
    main()
