"""The registered MLflow model's code ("models from code"): the ONNX network behind pyfunc.

MLflow runs this file when it loads the model; the work is in onnx_network.py, logged with it
(`code_paths`), so loading imports ONNX Runtime and MLflow, nothing of this project, and never
TensorFlow. Bad input is refused in one line, which MLflow's scoring server turns into a 400.
"""

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

try:  # the copy logged with the model: MLflow puts the model's code folder on sys.path
    import onnx_network
except ImportError:  # while MLflow logs the model it runs this file before that
    from pipeline.inference import onnx_network


class OnnxClassifier(mlflow.pyfunc.PythonModel):
    """float32 images (n, 28, 28) in [0, 1] → class probabilities (n, n_classes)."""

    def load_context(self, context) -> None:
        self.network = onnx_network.OnnxNetwork(context.artifacts[onnx_network.ONNX_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        try:
            return self.network.predict(model_input)
        except onnx_network.InputError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None


mlflow.models.set_model(OnnxClassifier())
