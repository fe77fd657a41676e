"""Train the LSTM on the preprocessed data; save the model and log the run to MLflow."""

from __future__ import annotations

import importlib.util
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

import pipeline.params.config as config
import pipeline.reports.drawing as drawing
import pipeline.runtime.cli as stage
import pipeline.tracking.lineage as lineage
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
import pipeline.training.cluster as cluster
import pipeline.training.onnx_export as onnx_export
import pipeline.training.tf_options as tf_options
from pipeline.data.files import (
    Arrays,
    atomic_path,
    load_arrays,
    sha256_file,
    write_csv,
    write_json,
)
from pipeline.inference import integrity, onnx_network

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
        return pd.DataFrame(self.rows, columns=HISTORY_COLUMNS).astype({"iteration": int})


def save_model(model, path: str | Path) -> None:
    """Save in Keras format; the file appears at `path` only once complete."""
    with atomic_path(path, ".keras") as temporary:
        model.save(temporary)


def training_dataset(train: Arrays, data_name: str):
    """The training set as an MLflow dataset (its digest computed)."""
    return mlflow.data.from_numpy(train["x"], targets=train["y"], name=f"{data_name}-train")


def log_model(onnx_file: str | Path, example, params: config.Params):
    """Log the ONNX network as the run's pyfunc model, with a signature and an input example.

    The pyfunc is `pipeline/inference/onnx_classifier.py` (MLflow's "models from code") over the
    `.onnx` file: loading and serving it need ONNX Runtime, never TensorFlow. MLflow checks the
    input example by loading that pyfunc, which costs ONNX Runtime's start, not TensorFlow's.
    The signature's output comes from that file too: Keras would trace its prediction again
    for the example's batch size, for the same (n, classes) float32.
    """
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


def save_models(model, val: Arrays, params: config.Params) -> dict[str, str]:
    """The .keras file and its checked ONNX export (DVC outputs); the Keras file is also
    logged to the run (artifact `keras/`). Returns tags for the run."""
    save_model(model, params.paths.model)
    images = val["x"][: onnx_export.CHECK_IMAGES]
    difference = onnx_export.export_checked(model, params.paths.onnx_model, images)
    mlflow.log_artifact(str(params.paths.model), KERAS_ARTIFACT_DIR)
    return {
        "onnx.largest_difference": f"{difference:.3g}",
        integrity.HASH_TAG: sha256_file(params.paths.onnx_model),  # what every load checks
        lineage.WEIGHTS_TAG: lineage.weights_sha256(model.get_weights()),
    }


def prepare_training(params: config.Params, workers: cluster.Cluster | None):
    """Set up TensorFlow and the network; return a function (train, val, history) → model.

    One process: the network is built here, before anything else draws from the seeded
    generators. Several workers: the returned function joins the cluster, and
    `distributed.fit` builds the same network in the strategy's scope.
    """
    tf_options.use_onednn(params.train.onednn)
    import pipeline.training.tf_runtime as tf_runtime  # TensorFlow loads once params are valid

    runtime = tf_runtime.configure_runtime(params.seed, params.train)
    network = params.network()  # `unroll: auto` settled
    runtime["model.unrolled"] = str(network.unroll).lower()
    if workers is None:
        import pipeline.training.fitting as fitting
        from pipeline.training.network import build_model

        model = build_model(network)
        trainer = fitting.compile_trainer(model, params.train)

        def train_model(train: Arrays, val: Arrays, report) -> object:
            clock = fitting.fit(trainer, train, val, params.train, params.seed, report)
            times = {"training": clock.training, "validation": clock.validation}
            mlflow.log_metrics({TIME_METRICS[name]: seconds for name, seconds in times.items()})
            return model

        return train_model, runtime
    import pipeline.training.distributed as distributed

    def train_distributed(train: Arrays, val: Arrays, report) -> object:
        # Joined only now: the others wait for the chief's MLflow set-up while registering
        # with the cluster (no deadline), never inside a collective (which has one).
        strategy = distributed.make_strategy()
        return distributed.fit(strategy, network, train, val, params.train, params.seed, report)

    return train_distributed, runtime | {"train.workers": str(workers.workers)}


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


def run_worker(params: config.Params, workers: cluster.Cluster) -> None:
    """A non-chief worker: train its share of each batch; no files, no MLflow."""
    train, val = (load_arrays(params.paths.split(split)) for split in ("train", "val"))
    train_model, _ = prepare_training(params, workers)
    train_model(train, val, lambda row: None)
    log.info(
        "worker %s:%d of %d: training done; the chief saves and logs the model",
        workers.task_type,
        workers.task_index,
        workers.workers,
    )


def run(params: config.Params) -> TrainResult | None:
    """Train, save the model and history, log everything to one MLflow run, register the model.

    With `train.distribution: multi_worker` every worker in TF_CONFIG runs this; only the
    chief writes files and talks to MLflow, and the others return None.
    """
    workers = cluster_of(params)
    if workers is not None and not workers.is_chief:
        run_worker(params, workers)
        return None
    # The splits are read and hashed (file reads and hashlib, without the GIL) in a thread
    # while the store's first connection imports its modules (which hold it).
    with ThreadPoolExecutor(max_workers=1) as background:
        splits = background.submit(load_splits, params)
        experiment_id = tracking.use_store(params.mlflow)  # first: an unreachable store fails fast
        tracking.close_orphaned_runs(experiment_id)
        train, val, data_hashes = splits.result()
    tags = lineage.lineage_tags(data_hashes, params)
    with (
        tracking.server_lost_as_error(),  # outermost: ending the run needs the server too
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=lineage.run_name(tags),
            log_system_metrics=params.mlflow.system_metrics,
        ) as run,
        tracking.killed_on_interrupt(),
        drawing.painter() as painter,  # its imports beside TensorFlow's
    ):
        # The dataset's digest copies the whole training array, which numpy does without the
        # GIL: made in a thread, it costs little beside TensorFlow's import, which holds it.
        # Logged from this thread: MLflow's active run is per thread.
        with ThreadPoolExecutor(max_workers=1) as background:
            dataset = background.submit(training_dataset, train, params.data.name)
            train_model, runtime = prepare_training(params, workers)
            inputs_tags = {"sha256": data_hashes["train"]}
            mlflow.log_input(dataset.result(), context="training", tags=inputs_tags)
        values = lineage.stage_params(params)
        mlflow.log_params(lineage.flatten(values))
        mlflow.log_dict(values, lineage.PARAMS_ARTIFACT)
        mlflow.set_tags(tags | tracking.process_tags() | lineage.environment_tags() | runtime)
        history = History(params.train.iterations)
        model = train_model(train, val, history)
        table = history.table()
        write_csv(table, params.paths.history)
        curves = painter.draw("training_curves", table)  # while the ONNX export runs
        model_tags = save_models(model, val, params)
        mlflow.set_tags(model_tags)
        mlflow.log_artifact(str(curves.result()), "figures")
        info = log_model(params.paths.onnx_model, val["x"][:3], params)
        onnx_sha256 = model_tags[integrity.HASH_TAG]
        if info.registered_model_version is not None:  # registration `always`
            registry.tag_version(mlflow.MlflowClient(), params.mlflow.registered_model,
                                 int(info.registered_model_version),
                                 {integrity.HASH_TAG: onnx_sha256})  # fmt: skip
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
    tf_options.without_unused_libraries()  # the stage's own process: it uses neither
    stage.run_stage(
        run,
        argv,
        __doc__,
        expected=(tracking.TrackingError, cluster.DistributionError, onnx_export.ExportError),
    )


if __name__ == "__main__":
    main()
