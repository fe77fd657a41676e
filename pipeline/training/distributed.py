"""Training on several workers: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG.

Keras 3's `model.fit` does not run under MultiWorkerMirroredStrategy on TensorFlow 2.21 /
Keras 3.15 (tensorflow/tensorflow#72388, keras-team/keras#20585), so this is a custom loop
in the shape of TensorFlow's tutorial "Custom training loop with Keras and
MultiWorkerMirroredStrategy": each replica runs the step on its share of the global batch
under `strategy.run`, its loss divided by the GLOBAL batch size (`tf.nn.compute_average_loss`),
and Keras's TensorFlow optimizer sums the replicas' gradients before applying them
(`TFOptimizer._all_reduce_sum_gradients`), which makes the global batch's mean gradient.

A dead peer is noticed by TensorFlow's coordination service (hosted by worker 0): a task
that sends no heartbeat for 10 s (`kDefaultHeartbeatTimeoutMs`, xla/tsl coordination_service.cc)
is set to error and the error is propagated to the other tasks; collectives also time out
after `COLLECTIVE_TIMEOUT_S` (`CommunicationOptions(timeout_seconds=...)`), so a worker
never waits forever in an all-reduce.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

import pipeline.params.config as config
from pipeline.data.files import Arrays
from pipeline.training import network
from pipeline.training.batches import Interval, training_batches, validation_batches
from pipeline.training.cluster import DistributionError
from pipeline.training.network import build_model

log = logging.getLogger(__name__)

# Longest a collective (an all-reduce of one step's gradients) may wait for a peer. It must
# cover the slowest legitimate wait: the first step, while each worker traces its graph.
COLLECTIVE_TIMEOUT_S = 60.0


def make_strategy(timeout_s: float = COLLECTIVE_TIMEOUT_S) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy from TF_CONFIG; blocks until every worker has joined."""
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """Each global batch split between the replicas, worker i taking the i-th part.

    Every worker builds the same seeded global batches; DATA sharding then rebatches each
    into per-replica parts, so the N workers together see exactly the one-process batches.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


# What a collective raises when a peer is gone: Unavailable (connection refused or reset, or
# the coordination service's heartbeat timeout), DeadlineExceeded (COLLECTIVE_TIMEOUT_S),
# Aborted/Cancelled/Internal (collectives aborted after an earlier error).
FAILED_PEER = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.InternalError,
)


def summarize_collective_error(error: tf.errors.OpError) -> str:
    """One line from TensorFlow's multi-line error: what aborted the collectives."""
    lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
    for marker in ("aborted by:", "unhealthy", "heartbeat", "timed out", "Deadline"):
        for index, line in enumerate(lines):
            if marker in line:
                reason = line.split("aborted by:")[-1].strip()
                if reason.endswith(":") and index + 1 < len(lines):  # the task names follow
                    reason += " " + lines[index + 1]
                return f"{type(error).__name__}: {reason}"
    return f"{type(error).__name__}: {lines[0] if lines else error}"


class Loop:
    """Compiled train and evaluation functions of `net` under `strategy`."""

    def __init__(self, strategy, net: keras.Model, optimizer, global_batch_size: int) -> None:
        self.strategy, self.net, self.optimizer = strategy, net, optimizer
        self.global_batch_size = global_batch_size
        self.train_steps = tf.function(self._train_steps)
        self.evaluate_batch = tf.function(self._evaluate_batch)

    @staticmethod
    def statistics(y: tf.Tensor, probabilities: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-example cross-entropy (on probabilities, as the Keras trainer) and correct count."""
        per_example = keras.losses.sparse_categorical_crossentropy(y, probabilities)
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(y, tf.int64)), tf.float32))
        return per_example, correct

    def replica_step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """One step on this replica's (batch / replicas, 28, 28); [loss sum, correct, count]."""
        with tf.GradientTape() as tape:
            probabilities = self.net(x, training=True)
            per_example, correct = self.statistics(y, probabilities)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
        gradients = tape.gradient(loss, self.net.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.net.trainable_variables, strict=True))
        count = tf.cast(tf.shape(y)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), correct, count])

    def _train_steps(self, iterator, steps: tf.Tensor) -> tf.Tensor:
        """`steps` steps; [loss sum, correct, examples] over them and over every worker."""
        totals = tf.zeros([3])
        for _ in tf.range(steps):
            x, y = next(iterator)
            per_replica = self.strategy.run(self.replica_step, args=(x, y))
            totals += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals

    def replica_evaluation(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        per_example, correct = self.statistics(y, self.net(x, training=False))
        return tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(y)[0], tf.float32)])

    def _evaluate_batch(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        per_replica = self.strategy.run(self.replica_evaluation, args=(x, y))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def evaluate(self, dataset) -> tuple[float, float]:
        """(mean loss, accuracy) over a distributed dataset, every worker scoring its part."""
        totals = np.zeros(3)
        for x, y in dataset:
            totals += self.evaluate_batch(x, y).numpy()
        return totals[0] / totals[2], totals[1] / totals[2]


def fit(
    strategy: tf.distribute.Strategy,
    model_params: config.ModelParams,
    train: Arrays,
    val: Arrays,
    settings: config.TrainParams,
    seed: int,
    report: Callable[[Interval], None],
) -> keras.Model:
    """Train `build_model(model_params)` on every worker at once; report every `log_every`.

    Every worker must call this with the same arguments. Returns the trained network as a
    plain Keras model outside the strategy, compiled with the trained Adam state, as the
    one-process trainer saves it.
    """
    try:
        net, optimizer = train_replicated(
            strategy, model_params, train, val, settings, seed, report
        )
    except FAILED_PEER as error:
        raise DistributionError(
            f"multi-worker training stopped: {summarize_collective_error(error)}; "
            "another worker failed or stopped answering (see its log), restart every worker"
        ) from None
    return plain_copy(net, optimizer, model_params, settings)


def train_replicated(strategy, model_params, train, val, settings, seed, report):
    """The loop itself; returns the network and optimizer built in the strategy's scope."""
    with strategy.scope():
        net = build_model(model_params)
        optimizer = network.adam(settings.learning_rate)
        optimizer.build(net.trainable_variables)
    loop = Loop(strategy, net, optimizer, settings.batch_size)
    batches = iter(
        distribute(strategy, training_batches(train["x"], train["y"], settings.batch_size, seed))
    )
    val_batches = distribute(strategy, validation_batches(val))
    done = 0
    while done < settings.iterations:
        interval = min(settings.log_every, settings.iterations - done)
        totals = np.zeros(3)
        for _ in range(interval // settings.steps_per_execution):
            totals += loop.train_steps(batches, tf.constant(settings.steps_per_execution)).numpy()
        done += interval
        val_loss, val_accuracy = loop.evaluate(val_batches)
        report(
            {
                "iteration": done,
                "train_loss": float(totals[0] / totals[2]),
                "train_accuracy": float(totals[1] / totals[2]),
                "val_loss": float(val_loss),
                "val_accuracy": float(val_accuracy),
            }
        )
    return net, optimizer


def plain_copy(net, optimizer, model_params: config.ModelParams, settings) -> keras.Model:
    """The trained weights and Adam state in a model built outside the strategy.

    A model built in the strategy's scope runs its Keras predict/evaluate across the workers
    (a collective gather) and would hang once the others have exited; the copy does not.
    """
    copy = build_model(model_params)
    copy.set_weights(net.get_weights())
    network.compile_network(copy, network.adam(settings.learning_rate))
    copy.optimizer.build(copy.trainable_variables)
    for target, source in zip(copy.optimizer.variables, optimizer.variables, strict=True):
        target.assign(source.numpy())
    return copy
