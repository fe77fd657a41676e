"""evaluate: metric arithmetic on known data, and logging into the run that train started."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import evaluate, fetch, preprocess, train


def test_confusion_and_per_class_on_known_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 0, 2])
    confusion = evaluate.confusion_matrix(labels, predictions, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    table = evaluate.per_class_metrics(confusion)
    assert table["precision"].tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert table["recall"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert table["f1"].tolist() == pytest.approx([0.5, 0.8, 2 / 3])
    assert table["support"].tolist() == [2, 2, 2]


def test_a_class_never_predicted_scores_zero_not_nan():
    table = evaluate.per_class_metrics(
        evaluate.confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2)
    )
    assert table["precision"].tolist() == [0.5, 0.0] and table["f1"].tolist()[1] == 0.0


def test_summary_metrics():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    metrics = evaluate.summary_metrics(probabilities, np.array([0, 1, 1]))
    assert metrics["test_accuracy"] == pytest.approx(2 / 3)
    assert metrics["test_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])))


def test_evaluate_writes_reports_and_logs_into_train_run(params, store, tmp_path):
    fetch.run(params)
    preprocess.run(params)
    trained = train.run(params)
    metrics = evaluate.run(params)

    written = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert written == metrics
    assert 0.0 <= written["test_accuracy"] <= 1.0 and written["test_loss"] > 0
    confusion = pd.read_csv(tmp_path / "reports/confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 40
    assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(
        written["test_accuracy"]
    )
    per_class = pd.read_csv(tmp_path / "reports/per_class.csv")
    assert per_class["support"].sum() == 40

    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_run(trained.run_id).info.experiment_id])
    assert [run.info.run_id for run in runs] == [trained.run_id]  # no second run
    logged = runs[0].data.metrics
    assert logged["test_accuracy"] == pytest.approx(written["test_accuracy"])
    assert "test_f1.class_9" in logged and "val_loss" in logged
    artifacts = {item.path for item in client.list_artifacts(trained.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.json" in artifacts
