"""The reference a served model's traffic is compared with: the test split as that model saw it.

evaluate writes it (a DVC output and an artifact of the model's run), a row per test image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.monitoring.statistics import STATISTICS, input_statistics

COLUMNS = ("predicted", "confidence", *STATISTICS)
# Each evaluated model's own reference, in its MLflow run: a version and its reference never part.
ARTIFACT = "monitoring/reference.csv"


class ReferenceUnreadable(Exception):
    """The reference is missing or is not one; the message names the file."""


def reference_records(images: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """images float (n, 28, 28) in [0, 1] and the model's probabilities (n, classes) → COLUMNS."""
    probabilities = np.asarray(probabilities)
    if len(images) != len(probabilities):
        raise ValueError(f"{len(images)} images but {len(probabilities)} rows of probabilities")
    return pd.DataFrame(
        {"predicted": probabilities.argmax(axis=1), "confidence": probabilities.max(axis=1)}
        | input_statistics(images)
    )


def read_reference(text: str) -> pd.DataFrame:
    """A reference from its CSV text; ReferenceUnreadable if it is not one."""
    try:
        records = pd.read_csv(io.StringIO(text))
    except ValueError as error:  # pandas' parser errors, an empty file
        raise ReferenceUnreadable(f"{ARTIFACT}: not a reference ({error})") from None
    missing = [name for name in COLUMNS if name not in records.columns]
    if missing or records.empty:
        raise ReferenceUnreadable(f"{ARTIFACT}: not a reference (no rows, or no {missing})")
    return records


def log_reference(path: str | Path) -> None:
    """Log the reference at `path` into the active run, as ARTIFACT."""
    import mlflow

    mlflow.log_text(Path(path).read_text(), ARTIFACT)


@dataclass(frozen=True)
class ModelReference:
    model: str  # as the prediction log names it: models:/mnist-lstm/3, or a file
    records: pd.DataFrame | None  # None: no reference for this model
    source: str  # where the records came from, or why there are none


def reference_of(model: str, client) -> ModelReference:
    """The reference evaluate logged with `model`'s run; none for a model not registered."""
    import mlflow

    from pipeline.tracking.registry import REGISTERED_URI, registered_version
    from pipeline.tracking.store import artifact_text

    if REGISTERED_URI.match(model) is None:
        return ModelReference(model, None, "none: only a registered version carries one")
    try:
        run_id = registered_version(client, model).run_id
    except mlflow.exceptions.MlflowException as error:
        why = str(error).splitlines()[0] if str(error) else type(error).__name__
        return ModelReference(model, None, f"none in this store ({why})")
    text = artifact_text(client, run_id, ARTIFACT)
    if text is None:
        return ModelReference(model, None, f"none in this store (its run has no {ARTIFACT})")
    try:
        records = read_reference(text)
    except ReferenceUnreadable as error:
        return ModelReference(model, None, f"none: {error}")
    return ModelReference(model, records, f"its evaluate run {run_id}")
