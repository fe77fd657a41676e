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
    figures = {item.path for item in client.list_artifacts(trained.run_id, "figures")}
    assert figures == {"figures/training_curves.png", "figures/confusion_matrix.png",
                       "figures/misclassified.png"}  # fmt: skip
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / "reports/figures" / name).read_bytes().startswith(b"\x89PNG")

    name = params.mlflow.registered_model
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert np.asarray(champion.predict(np.zeros((2, 28, 28), np.float32))).shape == (2, 10)


def test_model_card_names_run_data_scores_and_figures(params, store, tmp_path):
    fetch.run(params)
    preprocess.run(params)
    trained = train.run(params)
    metrics = evaluate.run(params)
    card = (tmp_path / "reports/model_card.md").read_text()
    manifest = json.loads((tmp_path / "data/raw/manifest.json").read_text())
    assert card.startswith("# Model card: mnist-lstm version 1")
    assert f"MLflow run: `{trained.run_id}`" in card
    assert manifest["arrays_sha256"]["x_train"] in card
    assert f"accuracy: **{metrics['test_accuracy']:.4f}**" in card
    assert "![confusion matrix](figures/confusion_matrix.png)" in card
    assert "![misclassified test digits](figures/misclassified.png)" in card
    assert "champion (`models:/mnist-lstm@champion`): this version" in card
    assert "| model.num_units | 8 |" in card
    assert "## Intended use and limits" in card
    logged = {item.path for item in mlflow.MlflowClient().list_artifacts(trained.run_id)}
    assert "model_card.md" in logged
