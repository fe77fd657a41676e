"""The network: shapes, softmax outputs, forget-gate bias, and that it is the plain Keras LSTM."""

import keras
import numpy as np
import pytest

from pipeline.params import config
from pipeline.training.network import build_model


def model_params(**changes) -> config.ModelParams:
    values = {"time_steps": 28, "n_input": 28, "num_units": 16, "forget_bias": 1.0, "n_classes": 10,
              "unroll": True}  # fmt: skip
    return config.ModelParams(**(values | changes))


def test_output_is_a_distribution_from_one_lstm_and_one_dense_layer():
    model = build_model(model_params(num_units=128))
    images = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (5, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert model.count_params() == 4 * 128 * (28 + 128 + 1) + 128 * 10 + 10


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, 2.5])
def test_forget_gate_bias_starts_at_forget_bias(forget_bias):
    lstm = build_model(model_params(forget_bias=forget_bias)).get_layer("lstm")
    bias = keras.ops.convert_to_numpy(lstm.cell.bias)  # gates i, f, c, o
    units = lstm.units
    assert np.all(bias[units : 2 * units] == forget_bias)
    assert np.all(bias[:units] == 0) and np.all(bias[2 * units :] == 0)


def test_rows_can_be_read_two_at_a_time():
    model = build_model(model_params(time_steps=14, n_input=56))
    assert model.get_layer("rows").output.shape == (None, 14, 56)
    assert model.predict(np.zeros((2, 28, 28), np.float32), verbose=0).shape == (2, 10)


@pytest.mark.parametrize(
    "unroll, iterations, built",
    [("auto", config.UNROLL_FROM - 1, False), ("auto", config.UNROLL_FROM, True),
     (True, 200, True), (False, 5000, False)],
)  # fmt: skip
def test_unroll_auto_unrolls_only_runs_long_enough_to_repay_the_tracing(unroll, iterations, built):
    assert config.network(model_params(unroll=unroll), iterations).unroll is built


def test_an_unsettled_unroll_is_refused_rather_than_taken_as_true():
    with pytest.raises(ValueError, match="settle it"):
        build_model(model_params(unroll="auto"))
