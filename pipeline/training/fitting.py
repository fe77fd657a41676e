"""The Keras training loop: seeded batches, exactly N iterations, a report every interval.

Speed comes from how the steps run, never from changing the model or its arithmetic: each
batch is split into `batch_shards` equal shards whose forward and backward passes are
independent graph branches, so TensorFlow runs them at once, one shard per core; the
gradient is the mean of the shards' gradients, which is the whole batch's gradient.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

import pipeline.params.config as config
import pipeline.runtime.processes as processes
from pipeline.data.files import Arrays

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 1000
TRAIN_MODULE = "pipeline.train"  # `python -m pipeline.train`, as DVC runs the stage
Interval = dict[str, float]


class IntervalReporter(keras.callbacks.Callback):
    """Stop after exactly `iterations` batches; hand each interval's metrics to `report`."""

    def __init__(self, iterations: int, report: Callable[[Interval], None]) -> None:
        super().__init__()
        self.iterations, self.report = iterations, report
        self.done = self.epoch_start = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_start = self.done

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # With steps_per_execution > 1 Keras calls this once per execution, `batch` the last one.
        self.done = self.epoch_start + batch + 1
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


class StepClock(keras.callbacks.Callback):
    """Wall seconds in training steps and in validation, from Keras's own hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.training = self.validation = 0.0
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.training += time.perf_counter() - self.started
        self.started = time.perf_counter()

    def on_test_end(self, logs: dict | None = None) -> None:
        self.validation += time.perf_counter() - self.started


def other_trainings() -> list[int]:
    """Pids of the other `python -m pipeline.train` processes on this machine."""
    return processes.processes(
        lambda cmdline, environ: processes.runs_module(cmdline, TRAIN_MODULE)
    )


def thread_counts(settings: config.TrainParams, others: int = 0) -> tuple[int, int]:
    """(intra-op, inter-op) threads; intra 0 means one share of the CPU cores per batch shard.

    With `others` trainings running beside this one (`dvc queue start -j 2`, workers of a
    search), inter-op 0 becomes the cores' share of this training, so that together they do not
    oversubscribe the cores. Only the number of ops at once changes, never the threads within an
    op: inter-op threads schedule independent ops, so the arithmetic, and the weights, stay the
    same as when training alone.
    """
    cores = processes.usable_cores()
    intra = settings.intra_op_threads or max(1, cores // settings.batch_shards)
    inter = settings.inter_op_threads
    if inter == 0 and others:
        inter = max(1, cores // ((others + 1) * intra))
    return intra, inter


def configure_runtime(seed: int, settings: config.TrainParams) -> dict[str, str]:
    """Thread pools, seeds and op determinism; call before TensorFlow runs its first op.

    Returns the thread counts in effect, as tags for the run (they decide summation order).
    """
    others = len(other_trainings())
    intra, inter = thread_counts(settings, others)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)  # 0: TensorFlow's default
        log.info(
            "TensorFlow threads: %d per op, %s ops at once; %d batch shards%s",
            intra,
            inter or "default",
            settings.batch_shards,
            f"; {others} other training(s) on this machine" if others else "",
        )
    except RuntimeError:  # TensorFlow already ran in this process (a notebook, a test)
        log.warning(
            "TensorFlow is already running in this process: its thread pools stay as "
            "they are, not intra-op %d / inter-op %d",
            intra,
            inter,
        )
    keras.utils.set_random_seed(seed)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    threading = tf.config.threading
    return {
        "tensorflow.intra_op_threads": str(threading.get_intra_op_parallelism_threads()),
        "tensorflow.inter_op_threads": str(threading.get_inter_op_parallelism_threads()),
        "tensorflow.onednn": onednn_in_use(),
    }


def onednn_in_use() -> str:
    """Whether TensorFlow runs its oneDNN kernels in this process: "true" or "false"."""
    # private: no public API says it. tf.sysconfig.get_build_info() and tf.test.is_built_with_*
    # name CUDA, ROCm, TensorRT and XLA, not oneDNN, and TF_ENABLE_ONEDNN_OPTS unset leaves
    # the choice to the build. TensorFlow's own tests ask this module.
    try:
        from tensorflow.python.util import _pywrap_util_port

        return str(bool(_pywrap_util_port.IsMklEnabled())).lower()
    except (ImportError, AttributeError):
        return "unknown"


class ShardedTrainer(keras.Model):
    """Trains `net` with each batch cut into `shards` parts whose passes run concurrently.

    Training batches split evenly (batch_size is a multiple of the shards), so the mean of the
    shards' mean losses is the batch's mean loss and the gradients are the batch's. Validation
    batches are split the same way, the last shard taking any remainder, and scored on the
    whole batch. Only training uses this class: `net` is what gets saved.
    """

    def __init__(self, net: keras.Model, shards: int) -> None:
        super().__init__(name=f"{net.name}_trainer")
        self.net, self.shards = net, shards

    def call(self, inputs, training: bool = False):
        return self.net(inputs, training=training)

    def split(self, tensor: tf.Tensor) -> list[tf.Tensor]:
        """`shards` parts along the batch axis, equal but for the remainder in the last."""
        total = tf.shape(tensor)[0]
        size = total // self.shards
        rest = total - size * (self.shards - 1)
        return tf.split(
            tensor, tf.concat([tf.fill([self.shards - 1], size), [rest]], 0), num=self.shards
        )

    def train_step(self, data):
        x, y = data
        x_shards, y_shards = self.split(x), self.split(y)
        with tf.GradientTape() as tape:
            predictions = [self.net(part, training=True) for part in x_shards]
            losses = [
                self.compute_loss(x=part, y=target, y_pred=predicted)
                for part, target, predicted in zip(x_shards, y_shards, predictions, strict=True)
            ]
            loss = tf.add_n(losses) / self.shards
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self.update_metrics(x, y, tf.concat(predictions, axis=0), loss)

    def test_step(self, data):
        x, y = data
        predicted = tf.concat([self.net(part, training=False) for part in self.split(x)], axis=0)
        loss = self.compute_loss(x=x, y=y, y_pred=predicted, training=False)
        return self.update_metrics(x, y, predicted, loss)

    def update_metrics(self, x, y, predicted, loss) -> dict:
        """The loss tracker (weighted by batch size, as Keras's own steps do) and the metrics."""
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(x)[0])
            else:
                metric.update_state(y, predicted)
        return {metric.name: metric.result() for metric in self.metrics}


def compile_trainer(net: keras.Model, settings: config.TrainParams) -> ShardedTrainer:
    """Adam on softmax cross-entropy, with accuracy, as the reference trains; ready for fit().

    `net` is compiled too, with the same optimizer, so the saved model carries its optimizer
    state and `evaluate()` works on it as on any compiled Keras model.
    """
    optimizer = keras.optimizers.Adam(learning_rate=settings.learning_rate)
    trainer = ShardedTrainer(net, settings.batch_shards)
    for model, steps in ((net, 1), (trainer, settings.steps_per_execution)):
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=steps,
        )
    return trainer


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
) -> StepClock:
    """Train for `settings.iterations` batches; validate and report every `log_every`.

    `callbacks` are extra Keras callbacks. Returns the time spent in training steps and in
    validation (also logged: `make bench` reads the line).
    """
    clock = StepClock()
    # One Keras "epoch" per logging interval; the reporter cuts the last one short.
    model.fit(
        batches(train["x"], train["y"], settings.batch_size, seed),
        steps_per_epoch=settings.log_every,
        epochs=math.ceil(settings.iterations / settings.log_every),
        # A dataset of our own: Keras's array adapter slices with a parallel map whose NodeDef
        # TensorFlow 2.21 logs as an E0000 error under op determinism with a partial batch.
        validation_data=tf.data.Dataset.from_tensor_slices((val["x"], val["y"])).batch(
            EVAL_BATCH_SIZE
        ),
        callbacks=[clock, IntervalReporter(settings.iterations, report), *(callbacks or [])],
        shuffle=False,  # the dataset is already shuffled, seeded
        verbose=0,
    )
    log.info(
        "time in training steps %.2f s (%.2f ms per iteration), in validation %.2f s",
        clock.training,
        1000 * clock.training / settings.iterations,
        clock.validation,
    )
    return clock
