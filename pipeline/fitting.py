"""The Keras training loop: seeded batches, exactly N iterations, a report every interval."""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline import config
from pipeline.data import Arrays

EVAL_BATCH_SIZE = 1000
Interval = dict[str, float]


class IntervalReporter(keras.callbacks.Callback):
    """Stop after exactly `iterations` batches; hand each interval's metrics to `report`."""

    def __init__(self, iterations: int, report: Callable[[Interval], None]) -> None:
        super().__init__()
        self.iterations, self.report = iterations, report
        self.done = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.done += 1
        if self.done >= self.iterations:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.report(
            {
                "iteration": self.done,
                "train_loss": float(logs["loss"]),
                "train_accuracy": float(logs["accuracy"]),
                "val_loss": float(logs["val_loss"]),
                "val_accuracy": float(logs["val_accuracy"]),
            }
        )


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow's kernels deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless shuffled batches from in-memory arrays (reshuffled each pass, seeded)."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def fit(
    model: keras.Model,
    train: Arrays,
    val: Arrays,
    settings: config.TrainParams,
    seed: int,
    report: Callable[[Interval], None],
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> None:
    """Train for `settings.iterations` batches; validate and report every `log_every`.

    `callbacks` are extra Keras callbacks (the benchmarks time training with one).
    """
    # One Keras "epoch" per logging interval; the reporter cuts the last one short.
    model.fit(
        batches(train["x"], train["y"], settings.batch_size, seed),
        steps_per_epoch=settings.log_every,
        epochs=math.ceil(settings.iterations / settings.log_every),
        validation_data=(val["x"], val["y"]),
        validation_batch_size=EVAL_BATCH_SIZE,
        callbacks=[IntervalReporter(settings.iterations, report), *(callbacks or [])],
        shuffle=False,  # the dataset is already shuffled, seeded
        verbose=0,
    )
