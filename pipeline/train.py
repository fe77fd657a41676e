"""Train the LSTM on the preprocessed data; save the model and log the run to MLflow."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.models import infer_signature

from pipeline import config, tracking
from pipeline.data import Arrays, atomic_path, load_arrays, sha256_file, write_json
from pipeline.model import build_model, compile_model
from pipeline.preprocess import split_path

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["iteration", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
EVAL_BATCH_SIZE = 1000


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    registered_version: int | None
    history: pd.DataFrame


class IntervalLogger(keras.callbacks.Callback):
    """Stop after exactly `iterations` batches; log each interval to the log, MLflow and a table."""

    def __init__(self, iterations: int, log_every: int) -> None:
        super().__init__()
        self.iterations, self.log_every = iterations, log_every
        self.done = 0
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.done += 1
        if self.done >= self.iterations:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        row = {
            "iteration": self.done,
            "train_loss": float(logs["loss"]),
            "train_accuracy": float(logs["accuracy"]),
            "val_loss": float(logs["val_loss"]),
            "val_accuracy": float(logs["val_accuracy"]),
        }
        self.rows.append(row)
        mlflow.log_metrics({k: v for k, v in row.items() if k != "iteration"}, step=self.done)
        log.info(
            "iteration %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
            self.done, self.iterations, row["train_loss"], row["train_accuracy"],
            row["val_loss"], row["val_accuracy"],
        )  # fmt: skip


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless shuffled batches from in-memory arrays (reshuffled each pass, seeded)."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def fit(model: keras.Model, train: Arrays, val: Arrays, params: config.Params) -> pd.DataFrame:
    """Train for `train.iterations` batches, validating every `log_every`; return the history."""
    settings = params.train
    logger = IntervalLogger(settings.iterations, settings.log_every)
    model.fit(
        batches(train["x"], train["y"], settings.batch_size, params.seed),
        steps_per_epoch=settings.log_every,
        epochs=math.ceil(settings.iterations / settings.log_every),
        validation_data=(val["x"], val["y"]),
        validation_batch_size=EVAL_BATCH_SIZE,
        callbacks=[logger],
        verbose=0,
    )
    return pd.DataFrame(logger.rows, columns=HISTORY_COLUMNS)


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save in Keras format; the file appears at `path` only once complete."""
    with atomic_path(path, ".keras") as temporary:
        model.save(temporary)


def write_history(history: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path, ".csv") as temporary:
        history.to_csv(temporary, index=False, float_format="%.6g")


def log_inputs(train: Arrays, data_hashes: dict[str, str]) -> None:
    """Record the training set as an MLflow dataset input, with its file hash."""
    dataset = mlflow.data.from_numpy(train["x"], targets=train["y"], name="mnist-train")
    mlflow.log_input(dataset, context="training", tags={"sha256": data_hashes["train"]})


def log_model(model: keras.Model, example: np.ndarray, params: config.Params):
    """Log the model with the TensorFlow flavour, a signature and an input example; register it.

    The TensorFlow flavour saves Keras models in `.keras` format; `mlflow.keras.log_model` fails
    when given an input example (mlflow/mlflow#16183).
    """
    signature = infer_signature(example, model.predict(example, verbose=0))
    return mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        registered_model_name=params.mlflow.registered_model,
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
    )


def run(params: config.Params) -> TrainResult:
    """Train, save the model and history, log everything to one MLflow run, register the model."""
    keras.utils.set_random_seed(params.seed)
    files = {split: split_path(params.paths.processed_dir, split) for split in ("train", "val")}
    train, val = (load_arrays(files[split]) for split in ("train", "val"))
    data_hashes = {split: sha256_file(path) for split, path in files.items()}
    model = build_model(params.model)
    compile_model(model, params.train.learning_rate)
    experiment_id = tracking.use_store(params.mlflow)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=os.environ.get("DVC_EXP_NAME")
    ) as run:
        mlflow.log_params(tracking.flatten(params.model_dump()))
        mlflow.set_tags(tracking.lineage_tags(data_hashes))
        log_inputs(train, data_hashes)
        history = fit(model, train, val, params)
        write_history(history, params.paths.history)
        save_model(model, params.paths.model)
        info = log_model(model, val["x"][:3], params)
        version = info.registered_model_version
        write_json(
            params.paths.run_info,
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "model_uri": info.model_uri,
                "registered_model": params.mlflow.registered_model,
                "registered_version": version,
            },
        )
    log.info("run %s: model %s registered as %s v%s", run.info.run_id, info.model_uri,
             params.mlflow.registered_model, version)  # fmt: skip
    return TrainResult(run.info.run_id, info.model_uri, version, history)


def main(argv: list[str] | None = None) -> None:
    params = config.load_params_from_cli(argv, __doc__)
    config.setup_logging()
    run(params)


if __name__ == "__main__":
    main()
