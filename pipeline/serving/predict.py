"""Classify image files (PNG, JPEG, any size, colour or grayscale), `.npy` arrays, or folders.

    python -m pipeline.serving.predict digit.png scans/ --csv predictions.csv

One `file<TAB>label<TAB>probability` line each; an unreadable file gets an `error:` line, exit 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import pipeline.params.tools as tools
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.data.files import write_csv
from pipeline.runtime import cli
from pipeline.serving import images, loader

log = logging.getLogger(__name__)


def expand(paths: list[Path]) -> list[Path]:
    """Files as given, and the image and `.npy` files inside folders (sorted, not recursive)."""
    found = []
    for path in paths:
        if path.is_dir():
            suffixes = images.IMAGE_SUFFIXES | {".npy"}
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
        else:
            found.append(path)
    return found


def results_table(
    files: list[Path], probabilities: np.ndarray, class_names: list[str]
) -> pd.DataFrame:
    """One row per file: its label, that label's probability, and every class's probability."""
    table = pd.DataFrame(probabilities, columns=[f"p_{name}" for name in class_names])
    table.insert(0, "file", [str(file) for file in files])
    table.insert(1, "label", [class_names[index] for index in probabilities.argmax(axis=1)])
    table.insert(2, "probability", probabilities.max(axis=1))
    return table


def run(
    params: tools.ToolParams, paths: list[Path], model: str | None = None, csv: Path | None = None
) -> int:
    """Classify every readable file with `model` (the champion); 1 if a file could not be read."""
    inputs, failed = {}, 0
    for file in expand(paths):
        try:
            inputs[file] = images.load_input(file, params.serve.max_image_pixels)
        except images.ImageError as error:
            sys.stderr.write(f"error: {file}: {error}\n")
            failed = 1
    if not inputs:
        return failed
    champion = registry.champion_uri(params.mlflow.registered_model)
    predict = loader.load(model or champion, params)
    probabilities = predict(np.stack(list(inputs.values())))
    results = results_table(list(inputs), probabilities, params.data.class_names)
    for row in results.itertuples(index=False):
        sys.stdout.write(f"{row.file}\t{row.label}\t{row.probability:.4f}\n")
    if csv is not None:
        write_csv(results, csv)
        log.info("wrote %s (%d rows)", csv, len(results))
    return failed


ARGUMENTS = {
    "paths": {"nargs": "+", "type": Path, "help": "image files, .npy files, folders"},
    "--model": {"help": "an MLflow model URI or an .onnx file (default: the champion)"},
    "--csv": {"type": Path, "help": "also write every class's probability here"},
}


def main(argv: list[str] | None = None) -> None:
    expected = (loader.ModelError, tracking.TrackingError)
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
