"""The one-process trainer: Keras's fit over seeded batches, exactly N iterations, a report
every interval.

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
import tensorflow as tf

import pipeline.params.config as config
from pipeline.data.files import Arrays
from pipeline.training import network
from pipeline.training.batches import Interval, training_batches, validation_batches

log = logging.getLogger(__name__)


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
    optimizer = network.adam(settings.learning_rate)
    trainer = ShardedTrainer(net, settings.batch_shards)
    network.compile_network(net, optimizer)
    network.compile_network(trainer, optimizer, settings.steps_per_execution)
    return trainer


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
        training_batches(train["x"], train["y"], settings.batch_size, seed),
        steps_per_epoch=settings.log_every,
        epochs=math.ceil(settings.iterations / settings.log_every),
        validation_data=validation_batches(val),
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
