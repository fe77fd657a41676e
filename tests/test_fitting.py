"""fitting: sharded steps take the whole batch's gradient; exact iteration counts; thread counts."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.params import config
from pipeline.training import fitting, tf_runtime
from pipeline.training.network import build_model

from .support import wait_until


def settings(**changes) -> config.TrainParams:
    values = {"learning_rate": 0.001, "batch_size": 16, "iterations": 6, "log_every": 3,
              "deterministic": True, "steps_per_execution": 3, "batch_shards": 2,
              "intra_op_threads": 0, "inter_op_threads": 0, "onednn": True,
              "distribution": "none"}  # fmt: skip
    return config.TrainParams(**(values | changes))


def twin_nets() -> tuple[keras.Model, keras.Model]:
    params = config.ModelParams(time_steps=28, n_input=28, num_units=8, forget_bias=1.0,
                                n_classes=10, unroll=False)  # fmt: skip
    first, second = build_model(params), build_model(params)
    second.set_weights(first.get_weights())
    return first, second


def batches(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


@pytest.mark.parametrize("shards", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_sharded_steps_take_the_whole_batch_gradient_and_score_as_keras_evaluates(shards):
    """Plain SGD, whose step is proportional to the gradient: any scale or shard error shows."""
    keras.utils.set_random_seed(0)
    sharded_net, plain = twin_nets()
    sharded = fitting.ShardedTrainer(sharded_net, shards)
    for model in (sharded, plain):  # plain: Keras's own train_step on the whole batch
        model.compile(keras.optimizers.SGD(learning_rate=0.5), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])  # fmt: skip
    x, y = batches(48)
    start = plain.get_weights()
    logs = [model.fit(x, y, batch_size=16, shuffle=False, verbose=0).history
            for model in (sharded, plain)]  # fmt: skip
    assert not np.allclose(plain.get_weights()[0], start[0], atol=1e-3)  # the steps moved it
    for ours, keras_own in zip(sharded_net.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(ours, keras_own, rtol=0, atol=2e-6)
    assert logs[0]["loss"] == pytest.approx(logs[1]["loss"], abs=1e-6)
    assert logs[0]["accuracy"] == pytest.approx(logs[1]["accuracy"])
    for n in (37, 1):  # validation batches of 16, 16, 5 and 1 (a shard of zero rows)
        x, y = batches(n, seed=n)
        ours = sharded.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
        keras_own = plain.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
        assert ours["loss"] == pytest.approx(keras_own["loss"], abs=1e-6)
        assert ours["accuracy"] == pytest.approx(keras_own["accuracy"])


@pytest.mark.parametrize(
    ("iterations", "log_every", "steps_per_execution", "reported"),
    [
        pytest.param(12, 6, 3, [6, 12], marks=pytest.mark.slow),
        (7, 3, 1, [3, 6, 7]),
        (4, 10, 1, [4]),  # an interval longer than the run: one report, at its end
    ],  # the last interval may be short; fmt: skip
)
def test_exactly_n_iterations_reported_every_interval(
    iterations, log_every, steps_per_execution, reported
):
    keras.utils.set_random_seed(0)
    net, _ = twin_nets()
    values = settings(iterations=iterations, log_every=log_every,
                      steps_per_execution=steps_per_execution)  # fmt: skip
    trainer = fitting.compile_trainer(net, values)
    x, y = batches(64)
    reports: list[dict] = []
    fitting.fit(trainer, {"x": x, "y": y}, {"x": x[:16], "y": y[:16]}, values, 0, reports.append)
    assert [row["iteration"] for row in reports] == reported
    assert int(trainer.optimizer.iterations.numpy()) == iterations


@pytest.mark.parametrize(
    ("cores", "changes", "others", "expected"),
    [
        (8, {"batch_shards": 2}, 0, (4, 0)),  # a share of the cores per shard
        (8, {"batch_shards": 16}, 0, (1, 0)),
        (8, {"intra_op_threads": 3, "inter_op_threads": 5}, 0, (3, 5)),  # as set
        # other trainings take their share of ops at once, never of threads per op
        (8, {"batch_shards": 2}, 1, (4, 1)),  # 8 cores / 2 / 4
        (16, {"batch_shards": 2}, 1, (8, 1)),
        (16, {"batch_shards": 4}, 1, (4, 2)),
        (16, {"batch_shards": 16}, 3, (1, 4)),
        (16, {"inter_op_threads": 5}, 3, (8, 5)),
    ],
)
def test_thread_counts_share_the_cores(monkeypatch, cores, changes, others, expected):
    monkeypatch.setattr(tf_runtime.processes, "usable_cores", lambda: cores)
    assert tf_runtime.thread_counts(settings(**changes), others=others) == expected


def test_another_training_on_this_machine_is_found_and_a_wrapper_of_this_one_is_not():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m",
                              "pipeline.train"])  # fmt: skip
    try:
        # under load a child's command line can still be empty when Popen returns: look a while
        assert wait_until(lambda: other.pid in tf_runtime.other_trainings(), 10, interval=0.05)
    finally:
        other.kill()
        other.wait()
    assert other.pid not in tf_runtime.other_trainings()
    # the parent has the training's words (as `time python -m pipeline.train`); the child trains
    child = ("import os, pipeline.training.tf_runtime as runtime; "
             "print(os.getppid() in runtime.other_trainings())")  # fmt: skip
    wrapper = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    result = subprocess.run([sys.executable, "-c", wrapper, "-m", "pipeline.train"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == "False"
