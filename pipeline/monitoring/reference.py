"""The reference the served model's traffic is compared with: the test split as the model saw it.

evaluate writes it (a DVC output) from the test images and the model's probabilities on them:
one row per image with the predicted class, its probability and the input statistics, the
columns the prediction log has for each scored image (pipeline/monitoring/prediction_log.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.files import write_csv
from pipeline.monitoring.statistics import STATISTICS, input_statistics

COLUMNS = ("predicted", "confidence", *STATISTICS)


class ReferenceUnreadable(Exception):
    """The reference is missing or is not one; the message names the file."""


def reference_records(images: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """The reference's rows: images float (n, 28, 28) in [0, 1] and the model's probabilities
    on them (n, classes) → one row per image, COLUMNS."""
    probabilities = np.asarray(probabilities)
    if len(images) != len(probabilities):
        raise ValueError(f"{len(images)} images but {len(probabilities)} rows of probabilities")
    return pd.DataFrame(
        {"predicted": probabilities.argmax(axis=1), "confidence": probabilities.max(axis=1)}
        | input_statistics(images)
    )


def write_reference(records: pd.DataFrame, path: str | Path) -> None:
    """Write the reference as CSV, atomically (floats to six significant digits)."""
    write_csv(records, path)


def read_reference(path: str | Path) -> pd.DataFrame:
    """The reference written by `write_reference`; ReferenceUnreadable when it is not there."""
    try:
        records = pd.read_csv(path)
    except FileNotFoundError:
        raise ReferenceUnreadable(
            f"no reference at {path}: the evaluate stage writes it (dvc repro)"
        ) from None
    except (OSError, ValueError) as error:
        raise ReferenceUnreadable(f"{path}: not a reference ({error})") from None
    missing = [name for name in COLUMNS if name not in records.columns]
    if missing or records.empty:
        raise ReferenceUnreadable(f"{path}: not a reference (no rows, or no {missing})")
    return records
