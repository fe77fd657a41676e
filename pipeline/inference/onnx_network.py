"""The ONNX network on ONNX Runtime: float32 images (n, 28, 28) in [0, 1] → class probabilities.

It imports numpy and ONNX Runtime only: the registered model carries a copy of this file
(`code_paths`), and the servers run it without loading MLflow at all.
"""

from __future__ import annotations

import os

import numpy as np

ONNX_ARTIFACT = "onnx_model"  # the MLflow model's artifact holding the .onnx file
IMAGE_SHAPE = (28, 28)  # config.IMAGE_SHAPE: this file is logged with the model, standalone
# Threads per prediction; unset: ONNX Runtime's default. `make serve WORKERS=N` sets it, so that
# N processes share the cores instead of each spinning a thread per core.
THREADS_ENV = "PIPELINE_ONNX_THREADS"
# "0": idle threads sleep rather than spin. Servers keep ONNX Runtime's spinning: with it, one
# image per request went faster at every concurrency, though the event loop shares the cores.
SPINNING_ENV = "PIPELINE_ONNX_SPINNING"
# Images per call into ONNX Runtime. The LSTM op keeps each step's gates, (batch, 4 × units)
# floats: for 128 images and 128 units 256 kB, which stays in a core's L2 cache, while 1,000
# images at once (2 MB) spill out of it; a large batch runs as calls of CHUNK images.
CHUNK = 128


class InputError(ValueError):
    """The input is not images this network takes; the message says what is wrong."""


def validated(model_input) -> np.ndarray:
    """float32 (n, 28, 28) in [0, 1], or InputError naming what is wrong."""
    try:
        images = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError("images must be numbers") from None
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"images of shape {images.shape}, expected (n, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]})"
        )
    # A NaN makes min and max NaN, which fails both comparisons, as ±inf fails one: two passes
    # over the pixels check finiteness and range at once.
    if not (images.min(initial=0) >= 0 and images.max(initial=0) <= 1):
        raise InputError("pixels must be finite and in [0, 1] (scale uint8 images by 1/255)")
    return np.ascontiguousarray(images)


class OnnxNetwork:
    """An `.onnx` file in an ONNX Runtime session: images → class probabilities; `threads` per
    run (else THREADS_ENV's), spinning unless `spinning` is False or SPINNING_ENV is "0"."""

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, spinning: bool | None = None
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        configured = os.environ.get(THREADS_ENV, "")
        threads = threads or (int(configured) if configured.isdigit() else 0)
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if spinning is False or os.environ.get(SPINNING_ENV) == "0":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.n_classes = self.session.get_outputs()[0].shape[-1]

    def predict(self, model_input) -> np.ndarray:
        images = validated(model_input)
        if len(images) == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        chunks = [images[start : start + CHUNK] for start in range(0, len(images), CHUNK)]
        scored = [self.session.run(None, {self.input_name: chunk})[0] for chunk in chunks]
        return scored[0] if len(scored) == 1 else np.concatenate(scored)
