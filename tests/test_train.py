"""train: exactly N iterations, a saved model, and one MLflow run with params, metrics and model."""

from __future__ import annotations

import math

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline import train
from pipeline.shared.data import read_json


def test_train_logs_one_complete_run(trained):
    params, root = trained.params, trained.root

    # history: one row per interval, the last at exactly `iterations`
    history = pd.read_csv(root / "reports/train_history.csv")
    assert list(history.columns) == train.HISTORY_COLUMNS
    assert history["iteration"].tolist() == [3, 6]
    assert len(history) == math.ceil(params.train.iterations / params.train.log_every)

    model = keras.saving.load_model(root / "models/model.keras")
    assert model.get_layer("lstm").units == params.model.num_units

    run_info = read_json(root / "models/mlflow_run.json")
    assert run_info["run_id"] == trained.run_id and run_info["registered_version"] == 1

    client = trained.client()
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == str(params.train.learning_rate)
    assert run.data.params["model.num_units"] == "8"
    assert run.data.tags["data.train_sha256"] and run.data.tags["data.val_sha256"]
    # the tags record the pools in effect in the process that trained
    intra, inter = trained.threads
    assert run.data.tags["tensorflow.intra_op_threads"] == str(intra)
    assert run.data.tags["tensorflow.inter_op_threads"] == str(inter)
    steps = [m.step for m in client.get_metric_history(trained.run_id, "val_accuracy")]
    assert steps == [3, 6]
    assert run.inputs.dataset_inputs[0].dataset.name == "MNIST-train"

    # the store lives at the repo root (DVC_ROOT), artifacts beside it
    assert (root / "mlflow.db").is_file()
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith(
        (root / "mlartifacts").as_uri()
    )


def test_registered_model_predicts_like_the_saved_keras_model_and_prints_nothing(trained, capfd):
    mlflow.set_registry_uri(f"sqlite:///{trained.root / 'mlflow.db'}")
    name = trained.params.mlflow.registered_model
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/1")
    keras_model = keras.saving.load_model(trained.root / "models/model.keras")
    images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    capfd.readouterr()
    predictions = np.asarray(pyfunc.predict(images))
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""  # no progress bar, per request, in a server log
    assert predictions.shape == (4, 10)
    np.testing.assert_allclose(predictions, keras_model.predict_on_batch(images), atol=1e-5)  # XLA
    assert pyfunc.metadata.get_input_schema().inputs[0].shape == (-1, 28, 28)
    assert pyfunc.metadata.saved_input_example_info["type"] == "ndarray"
