"""train: exactly N iterations, a saved model, and one MLflow run with params, metrics and model."""

from __future__ import annotations

import math

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from pipeline import fetch, preprocess, train
from pipeline.data import read_json


@pytest.fixture
def prepared(params, store):
    fetch.run(params)
    preprocess.run(params)
    return params


def test_train_logs_one_complete_run(prepared, store, tmp_path):
    params = prepared
    result = train.run(params)

    # history: one row per interval, the last at exactly `iterations`
    history = pd.read_csv(tmp_path / "reports/train_history.csv")
    assert list(history.columns) == train.HISTORY_COLUMNS
    assert history["iteration"].tolist() == [3, 6]
    assert len(history) == math.ceil(params.train.iterations / params.train.log_every)

    model = keras.saving.load_model(tmp_path / "models/model.keras")
    assert model.get_layer("lstm").units == params.model.num_units

    run_info = read_json(tmp_path / "models/mlflow_run.json")
    assert run_info["run_id"] == result.run_id and run_info["registered_version"] == 1

    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == str(params.train.learning_rate)
    assert run.data.params["model.num_units"] == "8"
    assert run.data.tags["data.train_sha256"] and run.data.tags["data.val_sha256"]
    threading = tf.config.threading  # the tags record the pools in effect in this process
    assert run.data.tags["tensorflow.intra_op_threads"] == str(
        threading.get_intra_op_parallelism_threads()
    )
    assert run.data.tags["tensorflow.inter_op_threads"] == str(
        threading.get_inter_op_parallelism_threads()
    )
    steps = [m.step for m in client.get_metric_history(result.run_id, "val_accuracy")]
    assert steps == [3, 6]
    assert run.inputs.dataset_inputs[0].dataset.name == "mnist-train"

    # the store lives at the repo root (DVC_ROOT), artifacts beside it
    assert (store / "mlflow.db").is_file()
    assert mlflow.get_experiment(run.info.experiment_id).artifact_location.startswith(
        (store / "mlartifacts").as_uri()
    )
    pyfunc = mlflow.pyfunc.load_model(f"models:/{params.mlflow.registered_model}/1")
    predictions = pyfunc.predict(np.zeros((4, 28, 28), np.float32))
    assert np.asarray(predictions).shape == (4, 10)


def test_iterations_not_a_multiple_of_log_every(prepared, raw_params, tmp_path):
    from pipeline import config

    raw_params["train"] |= {"iterations": 7, "log_every": 3, "steps_per_execution": 1}
    result = train.run(config.parse_params(raw_params))
    assert result.history["iteration"].tolist() == [3, 6, 7]
    assert result.registered_version == 1


def test_mlflow_tracking_uri_overrides_the_default(prepared, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    result = train.run(prepared)
    assert other.is_file() and not (tmp_path / "mlflow.db").exists()
    assert mlflow.MlflowClient(f"sqlite:///{other}").get_run(result.run_id)
