"""The previous registered model, kept for `make bench` only: a pyfunc over the `.keras` file.

Before the registered model became the ONNX export (pipeline/inference/onnx_classifier.py), this
was the model users loaded and served: TensorFlow in every process, the row-LSTM's forward pass
written out by hand (one matmul of [row, h] per step, one tanh over the four gates) and compiled
with XLA in chunks on a thread pool, checked against Keras at load, with Keras's own forward
pass as the fallback. benchmarks/serving.py logs it beside the ONNX model over the same weights
so that both are measured in one run. MLflow runs this file when it loads the model, so it
imports nothing from this project.
"""

import concurrent.futures
import os

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

KERAS_ARTIFACT = "keras_model"
CHUNK = 512  # images per compiled call; batches are cut into chunks of this size
BATCH_SIZES = [2**power for power in range(CHUNK.bit_length())]  # 1, 2, 4, ... CHUNK
CHECK_TOLERANCE = 1e-4  # largest probability difference from Keras accepted for the fused pass


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """float32 images (n, 28, 28) in [0, 1] → class probabilities (n, n_classes)."""

    def load_context(self, context) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ start-up chatter in logs
        import keras

        self.keras_model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        self.n_classes = self.keras_model.output_shape[-1]
        fused = fused_row_lstm(self.keras_model)
        fused = compiled(fused) if fused is not None else None
        if fused is not None and agrees(fused, self.keras_model):
            self.forward, self.compiled = "fused", fused
        else:
            self.forward, self.compiled = "keras", compiled(keras_forward(self.keras_model))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, cores or 1),
                                                          thread_name_prefix="pyfunc")  # fmt: skip

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        images = np.asarray(model_input, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise MlflowException.invalid_parameter_value(
                f"images of shape {images.shape}, expected (n, 28, 28)"
            )
        if not np.isfinite(images).all() or images.min(initial=0) < 0 or images.max(initial=0) > 1:
            raise MlflowException.invalid_parameter_value(
                "pixels must be finite and in [0, 1] (scale uint8 images by 1/255)"
            )
        if len(images) == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        if len(images) <= CHUNK:
            return self.predict_padded(images)
        chunks = [images[start : start + CHUNK] for start in range(0, len(images), CHUNK)]
        return np.concatenate(list(self.pool.map(self.predict_padded, chunks)))

    def predict_padded(self, images: np.ndarray) -> np.ndarray:
        """Score up to CHUNK images as a batch of the next power of two."""
        count = len(images)
        size = next(size for size in BATCH_SIZES if size >= count)
        if size != count:  # a full chunk goes in as it is, with no copy
            padded = np.zeros((size, *images.shape[1:]), dtype=np.float32)
            padded[:count] = images
            images = padded
        return self.compiled(images).numpy()[:count]


def compiled(probabilities):
    """`probabilities` in one tf.function compiled with XLA, traced once for every batch size.

    XLA still compiles once per shape it is given; one trace keeps tf.function from warning
    about retracing on stderr. Autograph off: nothing in here to convert, and it warns on
    stderr about functions whose source it cannot read.
    """
    import tensorflow as tf

    return tf.function(
        probabilities, jit_compile=True, autograph=False,
        input_signature=[tf.TensorSpec((None, 28, 28), tf.float32)],
    )  # fmt: skip


def agrees(function, network) -> bool:
    """`function` and the Keras model give the same probabilities on random images."""
    images = np.random.default_rng(0).random((BATCH_SIZES[5], 28, 28), dtype=np.float32)
    difference = function(images).numpy() - np.asarray(network(images, training=False))
    return bool(np.abs(difference).max() <= CHECK_TOLERANCE)


def keras_forward(network):
    """images → probabilities by calling the Keras model: right for any network."""

    def probabilities(images):
        return network(images, training=False)

    return probabilities


def fused_row_lstm(network):
    """images → probabilities for Reshape → LSTM → Dense softmax, or None for any other network.

    Keras's LSTM maths (gates i, f, c, o; sigmoid and tanh) from the layers' weights, with one
    matmul per step and one tanh over all four gates; the first step has h = 0.
    """
    import tensorflow as tf

    layers = row_lstm_layers(network)
    if layers is None:
        return None
    reshape, lstm, dense = layers
    time_steps, n_input = reshape.target_shape
    kernel, recurrent_kernel, bias = lstm.get_weights()
    units = lstm.units
    stacked = tf.constant(np.concatenate([kernel, recurrent_kernel]))  # (n_input + units, 4 units)
    input_kernel, bias = tf.constant(kernel), tf.constant(bias)
    dense_kernel, dense_bias = (tf.constant(weight) for weight in dense.get_weights())
    # sigmoid(v) = tanh(v / 2) / 2 + 1 / 2 on gates i, f, o; tanh(v) on the cell input c
    scales = np.full(4 * units, 0.5, dtype=np.float32)
    scales[2 * units : 3 * units] = 1.0
    offsets = np.where(scales == 0.5, 0.5, 0.0).astype(np.float32)
    scale, offset = tf.constant(scales), tf.constant(offsets)

    def probabilities(images):
        rows = tf.reshape(images, (-1, time_steps, n_input))  # (batch, steps, pixels)
        hidden = cell = None
        for step in range(time_steps):
            if hidden is None:
                gates = rows[:, step] @ input_kernel + bias  # (batch, 4 units)
            else:
                gates = tf.concat([rows[:, step], hidden], axis=1) @ stacked + bias
            activated = tf.tanh(gates * scale) * scale + offset
            input_gate, forget_gate, candidate, output_gate = tf.split(activated, 4, axis=1)
            kept = 0.0 if cell is None else forget_gate * cell
            cell = kept + input_gate * candidate  # (batch, units)
            hidden = output_gate * tf.tanh(cell)  # (batch, units)
        return tf.nn.softmax(hidden @ dense_kernel + dense_bias)

    return probabilities


def row_lstm_layers(network):
    """(Reshape, LSTM, Dense) when `network` is exactly the row-LSTM classifier; else None."""
    import keras

    layers = [layer for layer in network.layers if not isinstance(layer, keras.layers.InputLayer)]
    if [type(layer) for layer in layers] != [keras.layers.Reshape, keras.layers.LSTM,
                                             keras.layers.Dense]:  # fmt: skip
        return None
    reshape, lstm, dense = layers
    lstm_config, dense_config = lstm.get_config(), dense.get_config()
    plain_lstm = (
        lstm_config["activation"] == "tanh" and lstm_config["recurrent_activation"] == "sigmoid"
        and lstm_config["use_bias"] and not lstm_config["return_sequences"]
        and not lstm_config["return_state"] and not lstm_config["go_backwards"]
        and not lstm_config["stateful"]
    )  # fmt: skip
    softmax = dense_config["activation"] == "softmax" and dense_config["use_bias"]
    shapes = network.input_shape[1:] == (28, 28) and len(reshape.target_shape) == 2
    return (reshape, lstm, dense) if plain_lstm and softmax and shapes else None


mlflow.models.set_model(KerasClassifier())
