"""train: exactly N iterations, a saved model, and one MLflow run with params, metrics and model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.parse
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline import train
from pipeline.data.files import read_json
from pipeline.params import config
from pipeline.tracking import lineage
from pipeline.training import onnx_export, tf_runtime

from .support import REPO


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
    # the pools in effect in the training's process: intra-op as the settings give it
    # (inter-op depends on the other trainings running beside it)
    intra, _ = tf_runtime.thread_counts(params.train)
    assert run.data.tags["tensorflow.intra_op_threads"] == str(intra)
    assert run.data.tags["tensorflow.inter_op_threads"].isdigit()
    assert run.data.tags["model.unrolled"] == str(params.network().unroll).lower()
    steps = [m.step for m in client.get_metric_history(trained.run_id, "val_accuracy")]
    assert steps == [3, 6]
    assert run.inputs.dataset_inputs[0].dataset.name == "MNIST-train"
    assert any(key.startswith("system/") for key in run.data.metrics)  # mlflow.system_metrics
    # only what the stages read: the tools' settings are neither logged nor hashed
    assert {key.split(".")[0] for key in run.data.params} == set(config.Params.model_fields)
    logged = client.download_artifacts(trained.run_id, lineage.PARAMS_ARTIFACT, str(root))
    assert read_json(logged) == lineage.stage_params(params)  # the exact params, types and all
    assert config.parse_params(read_json(logged)).train == params.train

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
    np.testing.assert_allclose(predictions, keras_model.predict_on_batch(images),
                               atol=onnx_export.TOLERANCE)  # fmt: skip
    assert pyfunc.metadata.get_input_schema().inputs[0].shape == (-1, 28, 28)
    assert pyfunc.metadata.saved_input_example_info["type"] == "ndarray"


def test_the_registered_model_is_the_checked_onnx_export_and_names_no_tensorflow(trained):
    client = trained.client()
    run = client.get_run(trained.run_id)
    assert float(run.data.tags["onnx.largest_difference"]) <= onnx_export.TOLERANCE
    assert (trained.root / "models/model.onnx").is_file()
    model_uri = read_json(trained.root / "models/mlflow_run.json")["model_uri"]
    logged = client.get_logged_model(model_uri.removeprefix("models:/"))
    folder = urllib.parse.urlparse(logged.artifact_location).path  # a file: URI in this store
    requirements = (Path(folder) / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "tensorflow" not in requirements
    assert (Path(folder) / "artifacts/model.onnx").read_bytes() == (
        trained.root / "models/model.onnx"
    ).read_bytes()
    # the Keras network stays one call away, logged with the run
    keras_files = {item.path for item in client.list_artifacts(trained.run_id, "keras")}
    assert keras_files == {"keras/model.keras"}


NO_TENSORFLOW = """
import json, sys
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
probabilities = model.predict(np.full((2, 28, 28), 0.5, np.float32))
heavy = sorted(name for name in ("tensorflow", "keras", "tf2onnx") if name in sys.modules)
code = sys.modules["onnx_network"].__file__  # the network code logged with the model
print(json.dumps({"heavy": heavy, "shape": list(np.shape(probabilities)),
                  "logged_code": code.endswith("/code/onnx_network.py")}))
"""


def test_loading_and_predicting_the_champion_imports_no_tensorflow(trained):
    uri = f"sqlite:///{trained.root / 'mlflow.db'}"
    champion = f"models:/{trained.params.mlflow.registered_model}@champion"
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, uri, champion], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "heavy": [],
        "shape": [2, 10],
        "logged_code": True,
    }


def test_the_training_run_logs_its_time_in_steps_and_in_validation(trained):
    from pipeline.train import TIME_METRICS

    logged = trained.client().get_run(trained.run_id).data.metrics
    times = [logged[TIME_METRICS[name]] for name in ("training", "validation")]
    assert all(seconds > 0 for seconds in times), times
