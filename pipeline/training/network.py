"""The row-by-row LSTM classifier (build_model) and how it is compiled for training."""

from __future__ import annotations

import keras
import numpy as np

import pipeline.params.config as config


def build_model(params: config.ModelParams) -> keras.Model:
    """Image (28×28) → `time_steps` rows of `n_input` pixels → LSTM → Dense softmax over classes.

    `params.unroll` must be settled (`config.network`): Keras would take "auto" as true."""
    if not isinstance(params.unroll, bool):
        raise ValueError(f"model.unroll {params.unroll!r}: settle it with config.network first")
    images = keras.Input(shape=config.IMAGE_SHAPE, name="image")  # (batch, 28, 28)
    rows = keras.layers.Reshape((params.time_steps, params.n_input), name="rows")(images)
    # Keras adds no constant to the forget gate (TF1's forget_bias does); starting the learned
    # bias at forget_bias is the same function and the same gradients.
    last_output = keras.layers.LSTM(
        params.num_units, unit_forget_bias=False, unroll=params.unroll, name="lstm"
    )(rows)
    probabilities = keras.layers.Dense(params.n_classes, activation="softmax", name="classes")(
        last_output
    )  # (batch, n_classes)
    model = keras.Model(images, probabilities, name="row_lstm")
    set_forget_bias(model.get_layer("lstm"), params.forget_bias)
    return model


def set_forget_bias(layer: keras.layers.LSTM, forget_bias: float) -> None:
    """Set the forget-gate slice of the LSTM bias; Keras orders the gates i, f, c, o."""
    units = layer.units
    bias = np.zeros(4 * units, dtype="float32")
    bias[units : 2 * units] = forget_bias
    layer.cell.bias.assign(bias)


def adam(learning_rate: float) -> keras.optimizers.Optimizer:
    """The reference's optimizer."""
    return keras.optimizers.Adam(learning_rate=learning_rate)


def compile_network(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, steps_per_execution: int = 1
) -> None:
    """Softmax cross-entropy on the predicted probabilities, with accuracy, as the reference."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )
