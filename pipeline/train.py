"""Train the LSTM on the preprocessed data; save the model and log the run to MLflow.

MLflow is imported inside the functions: the training process (pipeline/training/trainer.py)
starts before this process imports it, so that TensorFlow loads there meanwhile.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pipeline.params.config as config
import pipeline.reports.drawing as drawing
import pipeline.runtime.cli as stage
import pipeline.tracking.lineage as lineage
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
import pipeline.training.cluster as cluster
import pipeline.training.trainer as trainer
from pipeline.data.files import Arrays, load_arrays, sha256_file, write_csv, write_json
from pipeline.inference import integrity, onnx_network

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# The registered model's code, logged with it; found without importing (it sets MLflow's model).
PYFUNC_CODE = importlib.util.find_spec("pipeline.inference.onnx_classifier").origin
NETWORK_CODE = onnx_network.__file__  # the network code it runs, logged beside it
KERAS_ARTIFACT_DIR = "keras"  # the run's artifact folder holding the .keras network
# Wall seconds inside training steps and inside validation (Keras's own hooks), as run metrics.
TIME_METRICS = {"training": "time/training_steps_s", "validation": "time/validation_s"}
HISTORY_COLUMNS = ["iteration", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    registered_version: int | None
    history: pd.DataFrame


class History:
    """Collects interval metrics; logs each to the console and to the active MLflow run."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.rows: list[dict[str, float]] = []

    def __call__(self, row: dict[str, float]) -> None:
        import mlflow

        self.rows.append(row)
        step = int(row["iteration"])
        mlflow.log_metrics({k: v for k, v in row.items() if k != "iteration"}, step=step)
        log.info(
            "iteration %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
            step,
            self.iterations,
            row["train_loss"],
            row["train_accuracy"],
            row["val_loss"],
            row["val_accuracy"],
        )

    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=HISTORY_COLUMNS).astype({"iteration": int})


def training_dataset(train: Arrays, data_name: str):
    """The training set as an MLflow dataset (its digest computed)."""
    import mlflow

    return mlflow.data.from_numpy(train["x"], targets=train["y"], name=f"{data_name}-train")


def log_model(onnx_file: str | Path, example, params: config.Params):
    """Log the ONNX network as the run's pyfunc model, with a signature and an input example.

    The pyfunc is `pipeline/inference/onnx_classifier.py` (MLflow's "models from code") over the
    `.onnx` file: loading and serving it need ONNX Runtime, never TensorFlow. MLflow checks the
    input example by loading that pyfunc, which costs ONNX Runtime's start, not TensorFlow's.
    The signature's output comes from that file too: Keras would trace its prediction again
    for the example's batch size, for the same (n, classes) float32.
    """
    import mlflow
    import numpy as np
    import onnxruntime
    from mlflow.models import infer_signature

    probabilities = onnx_network.OnnxNetwork(onnx_file).predict(example)
    signature = infer_signature(example, probabilities)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=PYFUNC_CODE,
        artifacts={onnx_network.ONNX_ARTIFACT: str(onnx_file)},
        code_paths=[NETWORK_CODE],
        signature=signature,
        input_example=example,
        # registration `better`: evaluate registers it if it beats the champion
        registered_model_name=params.mlflow.registered_model
        if params.mlflow.registration == "always"
        else None,
        pip_requirements=[
            f"onnxruntime=={onnxruntime.__version__}",
            f"numpy=={np.__version__}",
            f"mlflow=={mlflow.__version__}",
        ],
    )


def load_splits(params: config.Params) -> tuple[Arrays, Arrays, dict[str, str]]:
    """The training and validation splits, and their files' sha256."""
    files = {split: params.paths.split(split) for split in ("train", "val")}
    train, val = (load_arrays(files[split]) for split in ("train", "val"))
    return train, val, {split: sha256_file(path) for split, path in files.items()}


def cluster_of(params: config.Params) -> cluster.Cluster | None:
    """This process's place among the workers, or None when training in one process."""
    if params.train.distribution == "none":
        return None
    workers = cluster.cluster_from_environment()
    cluster.check_batch_split(params.train.batch_size, workers.workers)
    return workers


def run(params: config.Params) -> TrainResult | None:
    """Train, save the model and history, log everything to one MLflow run, register the model.

    The training runs in a process of its own (pipeline/training/trainer.py), started first:
    TensorFlow loads there while this process loads MLflow and starts the run. With
    `train.distribution: multi_worker` every worker in TF_CONFIG runs this; only the chief
    writes files and talks to MLflow, and the others train in this process and return None.
    """
    workers = cluster_of(params)
    if workers is not None and not workers.is_chief:
        trainer.fit_as_worker(params, workers)
        log.info("worker %s:%d of %d: training done; the chief saves and logs the model",
                 workers.task_type, workers.task_index, workers.workers)  # fmt: skip
        return None
    with trainer.training(params, workers) as training:
        return record(params, training)


def record(params: config.Params, training: trainer.Training) -> TrainResult:
    """The MLflow side of a training: the run, its live curves, the model logged and
    registered; the training itself goes on in its own process meanwhile."""
    # The splits are read and hashed (file reads and hashlib, without the GIL) in a thread
    # while the store's first connection imports its modules (which hold it).
    with ThreadPoolExecutor(max_workers=1) as background:
        splits = background.submit(load_splits, params)
        experiment_id = tracking.use_store(params.mlflow)  # first: an unreachable store fails fast
        tracking.close_orphaned_runs(experiment_id)
        training.go()  # the store answers: the fit may begin
        train, val, data_hashes = splits.result()
    import mlflow  # loaded by use_store, with the collector paused

    tags = lineage.lineage_tags(data_hashes, params)
    with (
        tracking.server_lost_as_error(),  # outermost: ending the run needs the server too
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=lineage.run_name(tags),
            log_system_metrics=params.mlflow.system_metrics,
        ) as run,
        tracking.killed_on_interrupt(),
        contextlib.ExitStack() as stack,
    ):
        inputs_tags = {"sha256": data_hashes["train"]}
        mlflow.log_input(training_dataset(train, params.data.name), "training", inputs_tags)
        values = lineage.stage_params(params)
        mlflow.log_params(lineage.flatten(values))
        mlflow.log_dict(values, lineage.PARAMS_ARTIFACT)
        mlflow.set_tags(tags | tracking.process_tags() | lineage.environment_tags())
        history = History(params.train.iterations)
        painters: list[drawing.Painter] = []  # started once the fit is done: beside the export

        def fitted() -> None:
            painters.append(stack.enter_context(drawing.painter()))

        trained = training.result(history, fitted)
        table = history.table()
        write_csv(table, params.paths.history)
        curves = painters[0].draw("training_curves", table.to_dict("list"))  # no pandas there
        mlflow.log_metrics({TIME_METRICS[name]: value for name, value in trained.seconds.items()})
        mlflow.set_tags(trained.tags)
        mlflow.log_artifact(str(params.paths.model), KERAS_ARTIFACT_DIR)
        info = log_model(params.paths.onnx_model, val["x"][:3], params)
        onnx_sha256 = trained.tags[integrity.HASH_TAG]
        if info.registered_model_version is not None:  # registration `always`
            registry.tag_version(mlflow.MlflowClient(), params.mlflow.registered_model,
                                 int(info.registered_model_version),
                                 {integrity.HASH_TAG: onnx_sha256})  # fmt: skip
        mlflow.log_artifact(str(curves.result()), "figures")
        run_info = {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "model_uri": info.model_uri,
            "registered_model": params.mlflow.registered_model,
            "registered_version": info.registered_model_version,
            "onnx_sha256": onnx_sha256,  # the file logged: evaluate checks it before loading
            "tracking_uri": tracking.shown(mlflow.get_tracking_uri()),  # the store it lives in
        }
        write_json(params.paths.run_info, run_info)
    if info.registered_model_version is None:
        log.info(
            "run %s: model logged; evaluate registers it if it beats the champion", run.info.run_id
        )
    else:
        log.info(
            "run %s: registered %s version %s",
            run.info.run_id,
            params.mlflow.registered_model,
            info.registered_model_version,
        )
    return TrainResult(run.info.run_id, info.model_uri, info.registered_model_version, table)


def main(argv: list[str] | None = None) -> None:
    stage.run_stage(
        run,
        argv,
        __doc__,
        expected=(tracking.TrackingError, trainer.TrainingError, *trainer.EXPECTED),
    )


if __name__ == "__main__":
    main()
