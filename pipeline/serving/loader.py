"""Which model to use (the registered champion by default) and loading it for prediction: the
servers and `predict` run its ONNX file through onnx_network.py, as the registered pyfunc does,
with no TensorFlow and no MLflow in the process (a model URI becomes a folder: cache.py)."""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pipeline.params.config as config
from pipeline.inference import cache as model_cache
from pipeline.inference.integrity import ModelError, onnx_file, verify
from pipeline.inference.onnx_network import OnnxNetwork

log = logging.getLogger(__name__)

# `mnist-lstm@champion`, `mnist-lstm/3`: a registered model named without its `models:/` scheme
REGISTERED_NAME = re.compile(r"[\w.-]+(@[\w-]+|/\d+)")
Predict = Callable[[np.ndarray], np.ndarray]  # float32 (n, 28, 28) → probabilities (n, classes)


@dataclass(frozen=True)
class Served:
    """A model as a server names it: as asked, what that named at start, the local copy."""

    model: str  # as asked: models:/mnist-lstm@champion, a model folder, an .onnx file
    pinned: str  # the version an alias named (models:/mnist-lstm/3); else as asked
    path: str  # the local model folder, or the .onnx file
    sha256: str = ""  # its ONNX file's, as registered ("": none recorded, or a file)


def locate(model: str | Served, params: config.Params) -> Served:
    """An `.onnx` file as it is; any MLflow model URI as the local folder of its files."""
    if isinstance(model, Served):
        return model
    if model.endswith(".keras"):
        raise ModelError(
            f"cannot load model {model}: a Keras file needs TensorFlow; give its "
            "ONNX export (models/model.onnx) or an MLflow model URI"
        )
    if model.endswith(".onnx"):
        return Served(model, model, model)
    if not urllib.parse.urlparse(model).scheme and not Path(model).exists():
        if REGISTERED_NAME.fullmatch(model):  # a registered model's name: give its URI
            raise ModelError(
                f"cannot load model {model}: no such file; for the registered model, give its "
                f"URI: models:/{model}"
            )
        raise ModelError(
            f"cannot load model {model}: no such file or folder (give a model folder, an .onnx "
            "file, or an MLflow model URI such as models:/NAME@ALIAS)"
        )
    pinned, folder, sha256 = model_cache.resolve(model, params)
    return Served(model, pinned, str(folder), sha256)


def load(model: str | Served, params: config.Params) -> Predict:
    """A model as one function of a batch of images (InputError for input it refuses)."""
    served = locate(model, params)
    path = onnx_file(served.path)
    verify(served.pinned, path, served.sha256)
    try:
        network = OnnxNetwork(path)
    except Exception as error:  # ONNX Runtime raises its own exception types for a bad file
        raise ModelError(
            f"cannot load model {served.model}: {str(error).splitlines()[0]}"
        ) from None
    log.info("loaded %s (%s)", served.model, path)
    return network.predict
