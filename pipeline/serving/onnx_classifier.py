"""The registered MLflow model's code ("models from code"): the ONNX network behind pyfunc.

MLflow runs this file when it loads the model, so it imports nothing from this project and
nothing heavier than ONNX Runtime: loading and predicting never import TensorFlow. The ONNX
file is the one the train stage exported and checked against Keras, and the one evaluate
scored: the metrics in the registry are this model's.

Input: float32 images (n, 28, 28) with pixels in [0, 1]; output: class probabilities
(n, n_classes). Bad input is refused with one line naming what is wrong, which MLflow's
scoring server turns into a 400.
"""

import os

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

ONNX_ARTIFACT = "onnx_model"
IMAGE_SHAPE = (
    28,
    28,
)  # config.IMAGE_SHAPE: this file is logged with the model and imports no pipeline module
THREADS_ENV = "PIPELINE_ONNX_THREADS"  # threads per prediction; unset: ONNX Runtime's default
# Images per call into ONNX Runtime. The LSTM op keeps each step's gates, (batch, 4 × units)
# floats: for 128 images and 128 units 256 kB, which stays in a core's L2 cache, while 1,000
# images at once (2 MB) spill out of it; a large batch runs as calls of CHUNK images.
CHUNK = 128


def session_options():
    """Errors only in the log; THREADS_ENV threads when set (`make serve WORKERS=N` sets it so
    that N processes share the cores instead of each spinning a thread per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    threads = os.environ.get(THREADS_ENV, "")
    if threads.isdigit() and int(threads) > 0:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def validated(model_input) -> np.ndarray:
    """float32 (n, 28, 28) in [0, 1], or an MlflowException naming what is wrong."""
    try:
        images = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError):
        raise MlflowException.invalid_parameter_value("images must be numbers") from None
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise MlflowException.invalid_parameter_value(
            f"images of shape {images.shape}, expected (n, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]})"
        )
    if not np.isfinite(images).all() or images.min(initial=0) < 0 or images.max(initial=0) > 1:
        raise MlflowException.invalid_parameter_value(
            "pixels must be finite and in [0, 1] (scale uint8 images by 1/255)"
        )
    return np.ascontiguousarray(images)


class OnnxClassifier(mlflow.pyfunc.PythonModel):
    """float32 images (n, 28, 28) in [0, 1] → class probabilities (n, n_classes)."""

    def load_context(self, context) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(
            context.artifacts[ONNX_ARTIFACT],
            session_options(),
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.session.get_inputs()[0].name
        self.n_classes = self.session.get_outputs()[0].shape[-1]

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        images = validated(model_input)
        if len(images) == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        chunks = [images[start : start + CHUNK] for start in range(0, len(images), CHUNK)]
        scored = [self.session.run(None, {self.input_name: chunk})[0] for chunk in chunks]
        return scored[0] if len(scored) == 1 else np.concatenate(scored)


mlflow.models.set_model(OnnxClassifier())
