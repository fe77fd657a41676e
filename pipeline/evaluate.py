"""Evaluate the trained model; pass it through the gate; write metrics and plots; log them.

The model scored is the ONNX file train exported and logged to its run: the local file and
the store's copy are both checked against the sha256 train recorded, so the metrics are those of
the artifact that is registered and served. ONNX Runtime scores it in a thread while MLflow and
the store load here. No TensorFlow is imported here.

The validation split chooses, the test split judges (docs/gate.md): the model must pass
the floors and behavioural checks on test images (`evaluate:` in params.yaml), and becomes
`champion` only if its validation accuracy beats the champion's, the champion scored again on
this run's own validation images. A failed gate is recorded, not a failed stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import pipeline.inference.cache as model_cache
import pipeline.params.config as config
import pipeline.reports.card as model_card
import pipeline.reports.drawing as drawing
import pipeline.reports.scores as scoring
import pipeline.runtime.cli as stage
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.data.files import Arrays, load_arrays, read_json, write_csv, write_json, write_text
from pipeline.gate import behaviour as checks
from pipeline.gate import rule
from pipeline.inference import integrity, onnx_network
from pipeline.monitoring.reference import log_reference, reference_records

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
# MLflow and pandas are imported inside the functions: scoring starts before they load.


def draw_figures(
    painter: drawing.Painter,
    test: Arrays,
    predictions: np.ndarray,
    confusion: np.ndarray,
    data: config.DataParams,
    folder: Path,
) -> dict[str, Future]:
    """The confusion matrix and misclassified images as PNGs (for DVC, MLflow and the card),
    drawn in the painter's process: file name → a Future of its path."""
    wrong = np.flatnonzero(test["y"] != predictions)  # the grid's images; not all 10,000
    drawn = {
        "confusion_matrix.png": ("confusion_heatmap", confusion, data.class_names),
        "misclassified.png": (
            "misclassified_grid",
            test["x"][wrong],
            test["y"][wrong],
            predictions[wrong],
            data.class_names,
            data.name,
        ),
    }
    return {name: painter.draw(*figure, path=folder / name) for name, figure in drawn.items()}


def metric_safe(name: str) -> str:
    """A class name as MLflow accepts it in a metric key (letters, digits, _ - . / and space)."""
    return re.sub(r"[^\w\-. /]", "_", name)


@dataclass(frozen=True)
class Evaluation:
    """What the stage measured on the validation and test splits, and the figures it drew."""

    metrics: dict[str, float]  # test_*, validation_*, the behavioural checks' values
    per_class: pd.DataFrame  # test: class, precision, recall, f1, support
    validation_per_class: pd.DataFrame  # the same on the validation split
    confusion: np.ndarray  # test (true class, predicted class) counts
    pictures: dict[str, Path]  # figure file name → its path


def per_class_metrics_flat(per_class: pd.DataFrame, split: str) -> dict[str, float]:
    """Per-class metrics keyed `<split>_f1/<class>`: MLflow's UI groups charts into sections by
    the prefix before a `/`, so they sit in sections of their own after the training curves and
    the headline metrics."""
    return {
        f"{split}_{column}/{metric_safe(row['class'])}": float(row[column])
        for row in per_class.to_dict("records")
        for column in ("precision", "recall", "f1")
    }


def log_results(results: Evaluation) -> None:
    """Metrics (overall and per class), tables and figures, into the active run."""
    import mlflow

    per_class = results.per_class
    mlflow.log_metrics(
        results.metrics
        | per_class_metrics_flat(per_class, "test")
        | per_class_metrics_flat(results.validation_per_class, "validation")
    )
    mlflow.log_table(per_class, "evaluation/per_class.json")
    matrix = {"labels": per_class["class"].tolist(), "matrix": results.confusion.tolist()}
    mlflow.log_dict(matrix, "evaluation/confusion_matrix.json")
    for picture in results.pictures.values():
        mlflow.log_artifact(str(picture), "figures")


def card_for(run, run_info: dict, decision: rule.Decision, results: Evaluation, params) -> str:
    """The model card's text, with lineage from the run's tags and the gate's verdict."""
    lineage = model_card.Lineage(
        git_commit=run.data.tags.get("git_commit", "unknown"),
        dvc_experiment=run.data.tags.get("dvc.exp_name", "none (plain dvc repro)"),
        run_id=run.info.run_id,
        registered_model=params.mlflow.registered_model,
        registered_version=decision.version,
        champion_version=decision.champion,
    )
    card_dir = Path(params.paths.model_card).parent
    links = [os.path.relpath(results.pictures[name], card_dir) for name in results.pictures]
    manifest = read_json(params.paths.raw_manifest)
    scores = (results.metrics, results.per_class)
    validation = model_card.validation_section(decision.status, decision.checks, decision.became())
    figures = model_card.Figures(*links)
    return model_card.render(params, manifest, scores, lineage, figures, validation)


def log_to_run(run_info: dict, results: Evaluation, val: Arrays, params) -> rule.Decision:
    """Log the results into train's run, pass the model through the gate, write and log the
    model card."""
    import mlflow

    with tracking.server_lost_as_error():
        run = mlflow.start_run(run_id=run_info["run_id"])
        try:
            log_results(results)
            log_reference(params.paths.monitor_reference)  # this model's own, for make monitor
            decision = rule.decide(run_info, results.metrics, val, params)
            write_text(params.paths.model_card, card_for(run, run_info, decision, results, params))
            mlflow.log_artifact(params.paths.model_card)
        except BaseException:
            with contextlib.suppress(Exception):  # a server that is gone cannot take the tag
                mlflow.set_tag("evaluate.status", "failed")
            raise
        finally:
            mlflow.end_run()  # FINISHED, as training did; a failed evaluation is tagged instead
    for check in decision.checks:
        (log.warning if check.failed else log.info)("gate: %s", check.line())
    log.info("gate: %s", decision.verdict_line())
    return decision


def scored(probabilities: np.ndarray, labels: np.ndarray, split: str, params) -> tuple:
    """A split's headline metrics and per-class table, and its confusion matrix."""
    predictions = probabilities.argmax(axis=1)
    confusion = scoring.confusion_matrix(labels, predictions, params.model.n_classes)
    per_class = scoring.per_class_metrics(confusion, params.data.class_names)
    metrics = scoring.summary_metrics(probabilities, labels, split) | {
        f"{split}_macro_f1": float(per_class["f1"].mean())
    }
    return metrics, per_class, confusion


def behaviour(predict, test: Arrays, predictions: np.ndarray, params: config.Params) -> dict:
    """The behavioural checks' values on the first `evaluate.behaviour_images` test images."""
    gate_params, count = params.evaluate, params.evaluate.behaviour_images
    return checks.behaviour_metrics(
        predict,
        test["x"][:count],
        test["y"][:count],
        predictions[:count],
        (gate_params.max_shift, gate_params.noise_sigma),
        params.seed,
    )


@dataclass(frozen=True)
class Scores:
    """The model's answers: what takes ONNX Runtime's time, done before MLflow is needed."""

    test: Arrays
    val: Arrays
    test_probabilities: np.ndarray
    val_probabilities: np.ndarray
    behaviour: dict[str, float]
    test_scores: tuple  # scored() of the test split: metrics, per-class table, confusion matrix
    pictures: dict[str, Future]  # figure file name → its path, drawn meanwhile


def score(params: config.Params, onnx_sha256: str | None, painter: drawing.Painter) -> Scores:
    """The exported ONNX file (its sha256 checked first) on both splits and the behavioural
    checks; the test split's figures sent to the painter as soon as its answers are known."""
    path = Path(params.paths.onnx_model)
    integrity.verify(str(path), path, onnx_sha256)
    # One thread that does not spin: the other core is MLflow's import meanwhile, which the
    # stage waits for; the same arithmetic per image, so the same scores.
    predict = onnx_network.OnnxNetwork(path, threads=1, spinning=False).predict
    test, val = (load_arrays(params.paths.split(split)) for split in ("test", "val"))
    log.info("scoring the exported model on %d test and %d validation images",
             len(test["x"]), len(val["x"]))  # fmt: skip
    probabilities = predict(test["x"])
    predictions = probabilities.argmax(axis=1)
    test_scores = scored(probabilities, test["y"], "test", params)
    folder = Path(params.paths.figures_dir)
    pictures = draw_figures(painter, test, predictions, test_scores[2], params.data, folder)
    found = behaviour(predict, test, predictions, params)
    return Scores(test, val, probabilities, predict(val["x"]), found, test_scores, pictures)


def measure(scores: Scores, params: config.Params) -> Evaluation:
    """Metrics of both splits and the behavioural checks; write the reports, once the figures
    are drawn."""
    import pandas as pd

    test, probabilities = scores.test, scores.test_probabilities
    predictions = probabilities.argmax(axis=1)
    metrics, per_class, confusion = scores.test_scores
    val_y = scores.val["y"]
    validation, validation_per_class, _ = scored(scores.val_probabilities, val_y, "validation",
                                                 params)  # fmt: skip
    metrics = metrics | {"test_min_class_f1": float(per_class["f1"].min())} | validation
    metrics |= scores.behaviour
    write_json(params.paths.metrics, metrics)
    write_csv(per_class, params.paths.per_class)
    # what make monitor compares the served model's traffic with
    write_csv(reference_records(test["x"], probabilities), params.paths.monitor_reference)
    names = np.asarray(params.data.class_names)
    write_csv(
        pd.DataFrame({"actual": names[test["y"]], "predicted": names[predictions]}),
        params.paths.confusion,
    )
    pictures = {name: picture.result() for name, picture in scores.pictures.items()}
    return Evaluation(metrics, per_class, validation_per_class, confusion, pictures)


def run(params: config.Params) -> dict[str, float]:
    """Score the validation and test splits; write metrics, plots, figures and the model card;
    log them; pass the model through the gate before any alias moves."""
    run_info = read_json(params.paths.run_info)
    onnx_sha256 = run_info.get("onnx_sha256")
    with ThreadPoolExecutor(max_workers=1) as background, drawing.painter() as painter:
        # ONNX Runtime without the GIL, and the figures in the painter's process, meanwhile
        scores = background.submit(score, params, onnx_sha256, painter)
        tracking.use_store(params.mlflow)  # meanwhile: MLflow's import and the store's, with it
        origin = run_info.get("tracking_uri")
        tracking.require_run(run_info["run_id"], origin, params.paths.run_info)
        with registry.downloaded(run_info["model_uri"], onnx_sha256):
            pass  # the store's copy is the file scored: the one registered and served
        answers = scores.result()
        results = measure(answers, params)
    metrics = results.metrics
    log.info(
        "validation accuracy %.4f; test accuracy %.4f, loss %.4f",
        metrics["validation_accuracy"],
        metrics["test_accuracy"],
        metrics["test_loss"],
    )
    decision = log_to_run(run_info, results, answers.val, params)
    if decision.champion is not None:  # the store is written for good now: the servers' copy of
        # the champion, made while MLflow is loaded here, spares their next start MLflow's start-up
        model_cache.prepare(registry.champion_uri(params.mlflow.registered_model), params)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage.run_stage(run, argv, __doc__, expected=(tracking.TrackingError, integrity.ModelError))


if __name__ == "__main__":
    main()
