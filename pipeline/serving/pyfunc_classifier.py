"""The registered MLflow model's code ("models from code"): the Keras network behind pyfunc.

MLflow runs this file when it loads the model, so it imports nothing from this project. It
scores with `predict_on_batch`, one compiled call, instead of the TensorFlow flavour's
`model.predict`, whose per-call set-up costs ~40 ms and prints a progress bar on each call.
"""

import os

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

KERAS_ARTIFACT = "keras_model"


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """float32 images (n, 28, 28) in [0, 1] → class probabilities (n, n_classes)."""

    def load_context(self, context) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ start-up chatter in logs
        import keras

        self.keras_model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

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
            return np.zeros((0, self.keras_model.output_shape[-1]), dtype=np.float32)
        return np.asarray(self.keras_model.predict_on_batch(images))


mlflow.models.set_model(KerasClassifier())
