"""The model registry's plumbing: aliases, version tags, loading a version (the rule: gate/rule.py).

MLflow is imported inside the functions: the servers name the champion without importing it."""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from pipeline.inference import integrity
from pipeline.inference.onnx_network import OnnxNetwork
from pipeline.tracking.store import server_lost_as_error

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

CHAMPION = "champion"

# A registered model's URI: models:/NAME/VERSION or models:/NAME@ALIAS (models:/m-<id> is a
# logged model, not a registered one).
REGISTERED_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def registered_version(client: mlflow.MlflowClient, uri: str):
    """The version a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names; None: not one."""
    match = REGISTERED_URI.match(uri)
    if match is None:
        return None
    if match["version"]:
        return client.get_model_version(match["name"], match["version"])
    return client.get_model_version_by_alias(match["name"], match["alias"])


def alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> int | None:
    """The version an alias points at, None when it points nowhere (or there is no model)."""
    import mlflow

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def version_tags(client: mlflow.MlflowClient, name: str, version: int) -> dict[str, str]:
    return dict(client.get_model_version(name, str(version)).tags)


def tag_version(client: mlflow.MlflowClient, name: str, version: int, tags: dict) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def register(name: str, model_uri: str, onnx_sha256: str | None) -> int:
    """A logged model as a new version of `name`, tagged with its ONNX file's sha256."""
    import mlflow

    tags = {integrity.HASH_TAG: onnx_sha256} if onnx_sha256 else None
    version = int(mlflow.register_model(model_uri, name, tags=tags).version)
    log.info("registered %s version %d", name, version)
    return version


@contextlib.contextmanager
def downloaded(model_uri: str, onnx_sha256: str | None) -> Iterator[str]:
    """A model in a temporary folder, its ONNX file checked against `onnx_sha256` (ModelError)."""
    import mlflow

    with server_lost_as_error(), tempfile.TemporaryDirectory(prefix="model-") as folder:
        local = mlflow.artifacts.download_artifacts(model_uri, dst_path=folder)
        integrity.verify(model_uri, integrity.onnx_file(local), onnx_sha256)
        yield local


def load_model(model_uri: str, onnx_sha256: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """A model as images → class probabilities: its checked ONNX file on ONNX Runtime, as the
    servers run it (the pyfunc runs the same, behind MLflow's slow loading)."""
    with downloaded(model_uri, onnx_sha256) as local:
        network = OnnxNetwork(integrity.onnx_file(local))  # read whole: the folder may go
    return network.predict
