"""Which model to use (the registered champion by default) and loading it for prediction.

Everything here runs on ONNX Runtime through MLflow's pyfunc: no TensorFlow is imported.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

import pipeline.shared.config as config
import pipeline.shared.registry as registry
import pipeline.shared.tracking as tracking

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]  # float32 (n, 28, 28) → probabilities (n, classes)


class ModelError(Exception):
    """The model cannot be found or loaded; the message names it."""


def default_uri(params: config.Params) -> str:
    return f"models:/{params.mlflow.registered_model}@{registry.CHAMPION}"


def load_pyfunc(model_uri: str, params: config.Params):
    """The MLflow pyfunc model at any MLflow URI (`models:/`, `runs:/`, a local folder)."""
    import mlflow

    tracking.connect(params.mlflow, tracking.repo_root())  # `models:/` resolves in that store
    try:
        return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    except (mlflow.exceptions.MlflowException, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"cannot load model {model_uri}: {message}") from None


def pinned(model_uri: str) -> str:
    """`models:/name@alias` as `models:/name/<the version it points at now>`; others as given.
    MLflow must be pointed at the store already (`tracking.connect`)."""
    import mlflow

    if not model_uri.startswith("models:/") or "@" not in model_uri:
        return model_uri
    name, alias = model_uri.removeprefix("models:/").split("@", 1)
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException as error:
        raise ModelError(f"cannot load model {model_uri}: {str(error).splitlines()[0]}") from None
    log.info("%s is version %s", model_uri, version)
    return f"models:/{name}/{version}"


def downloaded(model_uri: str, params: config.Params, folder: Path) -> str:
    """The model at `model_uri` (an alias pinned to its version first) copied into `folder`;
    the local path, which loads with no tracking store at all."""
    import mlflow

    tracking.connect(params.mlflow, tracking.repo_root())
    pinned_uri = pinned(model_uri)
    try:
        path = mlflow.artifacts.download_artifacts(pinned_uri, dst_path=str(folder))
    except (mlflow.exceptions.MlflowException, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"cannot load model {pinned_uri}: {message}") from None
    log.info("%s copied to %s for the workers", pinned_uri, path)
    return path


def load_onnx_file(path: Path):
    """An `.onnx` file (e.g. models/model.onnx) behind the registered model's own pyfunc class."""
    from pipeline.serving import onnx_classifier

    if not path.is_file():
        raise ModelError(f"cannot load model {path}: no such file")
    classifier = onnx_classifier.OnnxClassifier()
    try:
        classifier.load_context(
            types.SimpleNamespace(artifacts={onnx_classifier.ONNX_ARTIFACT: str(path)})
        )
    except Exception as error:  # onnxruntime raises its own exception types for a bad file
        raise ModelError(f"cannot load model {path}: {str(error).splitlines()[0]}") from None
    return classifier


def load(model: str, params: config.Params) -> Predict:
    """An `.onnx` file, or any MLflow model URI, as one function of a batch of images."""
    if model.endswith(".onnx"):
        classifier = load_onnx_file(Path(model))
        return lambda images: np.asarray(classifier.predict(None, images))
    if model.endswith(".keras"):
        raise ModelError(
            f"cannot load model {model}: a Keras file needs TensorFlow; give its "
            "ONNX export (models/model.onnx) or an MLflow model URI"
        )
    pyfunc = load_pyfunc(model, params)
    log.info("loaded %s", model)
    return lambda images: np.asarray(pyfunc.predict(images))
