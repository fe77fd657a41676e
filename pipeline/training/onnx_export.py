"""The trained Keras network as an ONNX file, checked against Keras before anything uses it.

Keras's own exporter (`Model.export(format="onnx")`, over tf2onnx), never
`tf2onnx.convert.from_keras`, which is broken on Keras 3 (onnx/tensorflow-onnx#2329, #2448).

What is exported is a copy of the network with every recurrent layer set to `unroll=False`
and `use_cudnn=False`, holding the same weights:
- a rolled LSTM is a loop that tf2onnx maps to ONNX's own `LSTM` op, one fused kernel in
  ONNX Runtime; an unrolled one becomes 28 steps of small matmuls, slower per image. `unroll`
  is a training-speed choice (docs/speed.md) that leaves the function computed unchanged.
- on a GPU, `use_cudnn="auto"` traces the layer as a `CudnnRNNV3` op, which ONNX has no
  equivalent for (keras-team/keras#21799); off, it is the plain maths on any machine.

TensorFlow is imported only inside the functions: the train stage imports this module before
it sets TensorFlow's start-up options (oneDNN), which TensorFlow reads once, when it loads.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.files import atomic_path

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

INPUT_NAME = "images"
# Keras and ONNX Runtime run the same float32 maths with other kernels, so their probabilities
# differ by rounding (a few 1e-7 for this network); a wrong weight, gate order or activation
# moves them by 1e-2 or more. 1e-5 sits well between the two.
TOLERANCE = 1e-5
# Images the check scores: one batch. A wrong weight, gate order or activation moves every
# image's probabilities, so a batch shows it as surely as the whole validation split would, for
# a fraction of the cost (Keras's prediction, traced for this call, runs on one thread here).
CHECK_IMAGES = 128


class ExportError(Exception):
    """The exported ONNX model does not compute what the Keras network computes."""


def _plain_recurrent(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh copy of `layer`; a recurrent layer rolled and without cuDNN."""
    import keras

    if not isinstance(layer, (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)):
        return layer.__class__.from_config(layer.get_config())
    config = layer.get_config() | {"unroll": False}
    if isinstance(layer, (keras.layers.LSTM, keras.layers.GRU)):
        return layer.__class__(**config, use_cudnn=False)  # not part of get_config()
    return layer.__class__.from_config(config)


def exportable(network: keras.Model) -> keras.Model:
    """The same function and weights, in the form that exports to plain ONNX ops."""
    import keras

    copy = keras.models.clone_model(network, clone_function=_plain_recurrent)
    copy.set_weights(network.get_weights())
    return copy


def write_onnx(network: keras.Model, path: Path) -> None:
    """Write `network` (float32 images (n, *input shape) → outputs) as ONNX at `path`."""
    import tensorflow as tf

    input_shape = tuple(network.input_shape[1:])
    signature = [tf.TensorSpec((None, *input_shape), tf.float32, name=INPUT_NAME)]
    with quiet_converter():
        exportable(network).export(
            str(path), format="onnx", verbose=False, input_signature=signature
        )


@contextlib.contextmanager
def quiet_converter():
    """tf2onnx logs each rewrite at INFO and Keras's numpy-2 patch warns; neither is news."""
    converter = logging.getLogger("tf2onnx")
    level = converter.level
    converter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"keras\..*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        converter.setLevel(level)


def largest_difference(network: keras.Model, path: str | Path, images: np.ndarray) -> float:
    """The largest |Keras − ONNX Runtime| class probability over `images`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.asarray(images, dtype=np.float32)
    onnx_probabilities = session.run(None, {session.get_inputs()[0].name: images})[0]
    keras_probabilities = np.asarray(network.predict_on_batch(images))
    return float(np.abs(onnx_probabilities - keras_probabilities).max(initial=0.0))


def export_checked(
    network: keras.Model, path: str | Path, images: np.ndarray, tolerance: float = TOLERANCE
) -> float:
    """Export to `path` once ONNX Runtime's probabilities on `images` match Keras's within
    `tolerance`; else raise ExportError and leave `path` as it was. Returns the difference."""
    with atomic_path(path, ".onnx") as temporary:
        write_onnx(network, temporary)
        difference = largest_difference(network, temporary, images)
        if difference > tolerance:
            raise ExportError(
                f"the ONNX export differs from the Keras network by {difference:.2e} "
                f"(tolerance {tolerance:.0e}) on {len(images)} validation images"
            )
    log.info(
        "exported %s: largest probability difference from Keras %.1e on %d images",
        path,
        difference,
        len(images),
    )
    return difference
