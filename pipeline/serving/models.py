"""Which model to use (the registered champion by default) and loading it for prediction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

import pipeline.shared.config as config
import pipeline.shared.tracking as tracking

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]  # float32 (n, 28, 28) → probabilities (n, classes)


class ModelError(Exception):
    """The model cannot be found or loaded; the message names it."""


def default_uri(params: config.Params) -> str:
    return f"models:/{params.mlflow.registered_model}@{tracking.CHAMPION}"


def load_pyfunc(model_uri: str, params: config.Params):
    """The MLflow pyfunc model at any MLflow URI (`models:/`, `runs:/`, a local folder)."""
    import mlflow

    tracking.connect(params.mlflow, tracking.repo_root())  # `models:/` resolves in that store
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"cannot load model {model_uri}: {message}") from None


def load(model: str, params: config.Params) -> Predict:
    """A `.keras` file, or any MLflow model URI, as one function of a batch of images."""
    if model.endswith(".keras"):
        if not Path(model).is_file():
            raise ModelError(f"cannot load model {model}: no such file")
        import keras

        network = keras.saving.load_model(model, compile=False)
        return lambda images: np.asarray(network.predict_on_batch(images))
    pyfunc = load_pyfunc(model, params)
    log.info("loaded %s", model)
    return lambda images: np.asarray(pyfunc.predict(images))
