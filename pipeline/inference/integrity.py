"""What is loaded is what was registered: the ONNX file's sha256, kept with the version (tag
`onnx.sha256`), checked before a registered version is loaded, so an artifact overwritten in the
store is never served silently. A version registered before the tag existed loads unchecked.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.data.files import sha256_file
from pipeline.inference.onnx_network import ONNX_ARTIFACT

HASH_TAG = "onnx.sha256"


class ModelError(Exception):
    """The model cannot be found or loaded; the message names it."""


def onnx_file(model: str) -> Path:
    """The ONNX network of an `.onnx` path or of a local MLflow model folder."""
    path = Path(model)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ModelError(f"cannot load model {model}: no such file")
        return path
    try:
        flavor = yaml.safe_load((path / "MLmodel").read_text())["flavors"]["python_function"]
        relative = flavor["artifacts"][ONNX_ARTIFACT]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise ModelError(
            f"cannot load model {model}: not an ONNX model of this project (its MLmodel names "
            f"no `{ONNX_ARTIFACT}` artifact); serve other MLflow models with `mlflow models serve`"
        ) from None
    return path / relative


def verify(model: str, onnx: Path, expected: str | None) -> None:
    """Refuse `onnx` (the file of `model`, a version) unless its sha256 is `expected` (if any)."""
    if not expected:
        return
    actual = sha256_file(onnx)
    if actual != expected:
        raise ModelError(
            f"refusing {model}: its ONNX file's sha256 is {actual}, but {expected} was "
            f"registered with it (tag {HASH_TAG}); the file in the store was changed"
        )
