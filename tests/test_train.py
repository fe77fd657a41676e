"""train: exactly N iterations, a saved model, and one MLflow run with params, metrics and model."""

import json
import math
import subprocess
import sys
import urllib.parse
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline import train
from pipeline.data.files import load_arrays, read_json, sha256_file
from pipeline.inference.integrity import HASH_TAG
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
    # compiled with the trained optimizer: its state comes back, and evaluate() works on it
    assert int(model.optimizer.iterations.numpy()) == params.train.iterations
    val = load_arrays(params.paths.split("val"))
    assert model.evaluate(val["x"], val["y"], verbose=0)[0] > 0

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

    times = [run.data.metrics[train.TIME_METRICS[name]] for name in ("training", "validation")]
    assert all(seconds > 0 for seconds in times), times
    # the store lives at the repo root (DVC_ROOT), artifacts beside it
    assert (root / "mlflow.db").is_file()
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith(
        (root / "mlartifacts").as_uri()
    )
    # the registered model is the checked ONNX export, its hash on the run and the version
    assert float(run.data.tags["onnx.largest_difference"]) <= onnx_export.TOLERANCE
    onnx_hash = sha256_file(root / params.paths.onnx_model)
    version = client.get_model_version(params.mlflow.registered_model, "1")
    assert run.data.tags[HASH_TAG] == version.tags[HASH_TAG] == onnx_hash
    logged = client.get_logged_model(run_info["model_uri"].removeprefix("models:/"))
    folder = Path(urllib.parse.urlparse(logged.artifact_location).path)  # a file: URI here
    requirements = (folder / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "tensorflow" not in requirements
    assert sha256_file(folder / "artifacts/model.onnx") == onnx_hash
    # the Keras network stays one call away, logged with the run
    keras_files = {item.path for item in client.list_artifacts(trained.run_id, "keras")}
    assert keras_files == {"keras/model.keras"}


NO_TENSORFLOW = """
import json, sys
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
print("predicting", file=sys.stderr, flush=True)
probabilities = model.predict(images)  # prints nothing: no progress bar in a server's log
heavy = sorted(name for name in ("tensorflow", "keras", "tf2onnx") if name in sys.modules)
code = sys.modules["onnx_network"].__file__  # the network code logged with the model
inputs = model.metadata.get_input_schema().inputs[0].shape
print(json.dumps({"heavy": heavy, "probabilities": probabilities.tolist(), "input": inputs,
                  "example": model.metadata.saved_input_example_info["type"],
                  "logged_code": code.endswith("/code/onnx_network.py")}))
"""


def test_the_champion_loads_and_predicts_as_keras_without_tensorflow_and_prints_nothing(trained):
    uri = f"sqlite:///{trained.root / 'mlflow.db'}"
    champion = f"models:/{trained.params.mlflow.registered_model}@champion"
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, uri, champion], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [printed] = result.stdout.splitlines()
    assert result.stderr.endswith("predicting\n"), result.stderr
    answer = json.loads(printed)
    assert answer.pop("heavy") == [] and answer.pop("logged_code")
    assert answer.pop("input") == [-1, 28, 28] and answer.pop("example") == "ndarray"
    images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    keras_model = keras.saving.load_model(trained.root / "models/model.keras")
    np.testing.assert_allclose(answer["probabilities"], keras_model.predict_on_batch(images),
                               atol=onnx_export.TOLERANCE)  # fmt: skip
