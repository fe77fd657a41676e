"""Evaluate the trained model; pass it through the gate; write metrics and plots; log them.

The model scored is the one train logged to its MLflow run (the ONNX network, through its
pyfunc), loaded from the store as a user loads it: the metrics are those of the artifact that
is registered and served. No TensorFlow is imported here.

The validation split chooses, the test split judges (docs/validation.md): the model must pass
the floors and behavioural checks on test images (`evaluate:` in params.yaml), and becomes
`champion` only if its validation accuracy beats the champion's, the champion scored again on
this run's own validation images. A failed gate is recorded, not a failed stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
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
import pipeline.validation.behaviour as checks
import pipeline.validation.gate as gate
from pipeline.data.files import Arrays, load_arrays, read_json, write_csv, write_json, write_text
from pipeline.monitoring.reference import log_reference, reference_records, write_reference

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
        "confusion_matrix.png": figures.confusion_heatmap(confusion, data.class_names),
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
    """What the stage measured on the validation and test splits, and the figures it drew."""

    metrics: dict[str, float]  # test_*, validation_*, the behavioural checks' values
    per_class: pd.DataFrame  # test: class, precision, recall, f1, support
    validation_per_class: pd.DataFrame  # the same on the validation split
    confusion: np.ndarray  # test (true class, predicted class) counts
    pictures: dict[str, Path]  # figure file name → its path


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on this model and what became of the aliases."""

    release: list[gate.Check]  # floors and behavioural checks
    gain: gate.Check | None  # against the champion before; None when there was none
    version: int | None  # the registered version (None: `registration: better` and not good)
    champion: int | None  # the champion afterwards
    champion_before: int | None

    @property
    def status(self) -> str:
        return gate.status(self.release)

    @property
    def checks(self) -> list[gate.Check]:
        """Every check judged: the release checks, then the gain where there was one."""
        return self.release + ([self.gain] if self.gain else [])


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


def card_for(run, run_info: dict, decision: Decision, results: Evaluation, params) -> str:
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
    validation = model_card.validation_section(decision.status, decision.checks, outcome(decision))
    figures = model_card.Figures(*links)
    return model_card.render(params, manifest, scores, lineage, figures, validation)


def outcome(decision: Decision) -> str:
    """One sentence on what the verdict did to the aliases."""
    before = "none" if decision.champion_before is None else f"version {decision.champion_before}"
    if decision.version is None:
        return f"Not registered (`mlflow.registration: better`); the champion stays {before}."
    if decision.status == gate.FAILED:
        return f"Never champion: it failed a release check; the champion stays {before}."
    if decision.champion == decision.version:
        return f"It became `{registry.CHAMPION}` (before: {before})."
    return (
        f"It passed the release checks but had no gain: `{registry.CHALLENGER}`; the champion "
        f"is version {decision.champion}."
    )


def verdict_line(decision: Decision) -> str:
    """The gate's verdict as one sentence: the release checks, the gain, what it became."""
    if decision.status == gate.FAILED:
        failed = ", ".join(check.metric for check in decision.release if check.failed)
        head = f"release checks FAILED ({failed})"
    else:
        head = "release checks passed"
    gain = decision.gain
    if gain is not None:
        had = "a gain" if gain.passed else "no gain"
        over = f"champion v{decision.champion_before}"
        head += f"; {had} over {over} ({gain.metric} {gain.value:.4f}, needs {gain.rule})"
    elif decision.status == gate.PASSED and decision.champion_before is not None:
        head += f"; it is champion v{decision.champion_before} already: no gain to have"
    if decision.version is None:
        return head + ": not registered (mlflow.registration: better)"
    if decision.champion == decision.version:
        return head + f": champion (version {decision.version})"
    became = "never champion" if decision.status == gate.FAILED else registry.CHALLENGER
    return head + f": {became} (version {decision.version}; champion v{decision.champion})"


class VersionScorer:
    """Validation accuracy of registered versions on this run's validation images, each
    version's ONNX model loaded through MLflow once: candidate and champion scored alike."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray) -> None:
        self.name, self.images, self.labels = name, images, labels
        self.scores: dict[int, float] = {}

    def __call__(self, version: int) -> float:
        """The version's accuracy; -inf for one whose model cannot be loaded (its artifacts
        gone, or kept by another server): it can neither stay champion nor become it."""
        if version not in self.scores:
            self.scores[version] = self.score(version)
        return self.scores[version]

    def score(self, version: int) -> float:
        uri = f"models:/{self.name}/{version}"
        try:
            probabilities = load_logged(uri)(self.images)
        except mlflow.exceptions.MlflowException as error:
            log.warning("cannot score %s: %s", uri, str(error).splitlines()[0])
            return float("-inf")
        score = float((probabilities.argmax(axis=1) == self.labels).mean())
        log.info("version %d: validation accuracy %.4f on this run's images", version, score)
        return score


def decide(run_info: dict, results: Evaluation, val: Arrays, params: config.Params) -> Decision:
    """Judge the model, register it if `registration: better` and it passed the whole gate,
    tag the run and version with the verdict, and move the aliases it has earned."""
    name, metrics = params.mlflow.registered_model, results.metrics
    client = mlflow.MlflowClient()
    registered = run_info["registered_version"]  # a string from a tracking server
    version = None if registered is None else int(registered)
    release = gate.release_checks(metrics, params.evaluate)
    before = registry.alias_version(client, name, registry.CHAMPION)
    scorer = VersionScorer(name, val["x"], val["y"])
    gain = None  # none to gain over: no champion yet, or this model is it (judged again)
    if gate.status(release) == gate.PASSED and before not in (None, version):
        gain = gate.gain_check(
            metrics["validation_accuracy"], scorer(before), params.evaluate.min_gain
        )
        if scorer(before) > float("-inf"):
            mlflow.log_metric("champion_validation_accuracy", scorer(before))
    contends = gate.status(release) == gate.PASSED and (gain is None or gain.passed)
    if params.mlflow.registration == "better":  # train logged the model, unregistered
        version = registry.register(name, run_info["model_uri"]) if contends else None
    tags = gate.tags(release, gain)
    mlflow.set_tags(tags | {"validation.version": str(version or "not registered")})
    if version is None:
        return Decision(release, gain, None, before, before)
    passed_at = {registry.PASSED_AT_TAG: f"{time.time():.3f}"} if contends else {}
    registry.tag_version(client, name, version, tags | passed_at)
    champion = before
    if contends:
        scorer.scores[version] = metrics["validation_accuracy"]
        champion = registry.settle_champion(
            name, version, scorer, gate.beats(params.evaluate.min_gain)
        )
    registry.settle_challenger(client, name)
    return Decision(release, gain, version, champion, before)


def log_to_run(run_info: dict, results: Evaluation, val: Arrays, params) -> Decision:
    """Log the results into train's run, pass the model through the gate, write and log the
    model card."""
    with tracking.server_lost_as_error():
        run = mlflow.start_run(run_id=run_info["run_id"])
        try:
            log_results(results)
            log_reference(params.paths.monitor_reference)  # this model's own, for make monitor
            decision = decide(run_info, results, val, params)
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
    log.info("gate: %s", verdict_line(decision))
    return decision


def load_logged(model_uri: str):
    """The model train logged (or a registered version), loaded through MLflow's pyfunc, as a
    function of images → class probabilities."""
    with tracking.server_lost_as_error():
        # No requirements check: train logged them from this same environment, and MLflow's
        # check maps every installed distribution to its modules first, which takes seconds.
        model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    return lambda images: np.asarray(model.predict(images))


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


def measure(predict, test: Arrays, val: Arrays, params: config.Params) -> Evaluation:
    """Score both splits and the behavioural checks; write the reports and figures."""
    log.info("scoring %s on %d test and %d validation images", "the logged model",
             len(test["x"]), len(val["x"]))  # fmt: skip
    probabilities = predict(test["x"])
    predictions = probabilities.argmax(axis=1)
    metrics, per_class, confusion = scored(probabilities, test["y"], "test", params)
    validation, validation_per_class, _ = scored(predict(val["x"]), val["y"], "validation", params)
    metrics |= {"test_min_class_f1": float(per_class["f1"].min())} | validation
    metrics |= behaviour(predict, test, predictions, params)
    write_json(params.paths.metrics, metrics)
    write_csv(per_class, params.paths.per_class)
    # what make monitor compares the served model's traffic with
    write_reference(reference_records(test["x"], probabilities), params.paths.monitor_reference)
    names = np.asarray(params.data.class_names)
    write_csv(
        pd.DataFrame({"actual": names[test["y"]], "predicted": names[predictions]}),
        params.paths.confusion,
    )
    pictures = write_figures(
        test, predictions, confusion, params.data, Path(params.paths.figures_dir)
    )
    return Evaluation(metrics, per_class, validation_per_class, confusion, pictures)


def run(params: config.Params) -> dict[str, float]:
    """Score the validation and test splits; write metrics, plots, figures and the model card;
    log them; pass the model through the gate before any alias moves."""
    run_info = read_json(params.paths.run_info)
    tracking.use_store(params.mlflow)
    tracking.require_run(run_info["run_id"], run_info.get("tracking_uri"), params.paths.run_info)
    test, val = (load_arrays(params.paths.split(split)) for split in ("test", "val"))
    results = measure(load_logged(run_info["model_uri"]), test, val, params)
    metrics = results.metrics
    log.info(
        "validation accuracy %.4f; test accuracy %.4f, loss %.4f",
        metrics["validation_accuracy"],
        metrics["test_accuracy"],
        metrics["test_loss"],
    )
    decision = log_to_run(run_info, results, val, params)
    if decision.champion is not None:  # the store is written for good now: the servers' copy of
        # the champion, made while MLflow is loaded here, spares their next start MLflow's start-up
        model_cache.prepare(registry.champion_uri(params.mlflow.registered_model), params)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage.run_stage(run, argv, __doc__, expected=(tracking.TrackingError,))


if __name__ == "__main__":
    main()
