"""Scale pixels to [0, 1], hold out a seeded validation set, check the data and report it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

import pipeline.params.config as config
import pipeline.runtime.cli as stage
from pipeline.data.files import (
    Arrays,
    load_arrays,
    read_json,
    save_arrays,
    sha256_file,
    write_json,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DataError(Exception):
    """The data on disk is not what the pipeline expects; the message says how to recover."""


def load_raw(paths: config.PathParams) -> Arrays:
    """Load fetch's arrays after checking the file against fetch's manifest."""
    raw_file, manifest_file = Path(paths.raw_data), Path(paths.raw_manifest)
    if not raw_file.is_file() or not manifest_file.is_file():
        raise DataError(f"{raw_file} or its manifest is missing: run `dvc repro fetch`")
    expected = read_json(manifest_file)["raw_data_sha256"]
    actual = sha256_file(raw_file)
    if actual != expected:
        raise DataError(
            f"{raw_file} is corrupted (sha256 {actual}, manifest says {expected}): "
            "restore it with `dvc checkout` or refetch with `dvc repro -f fetch`"
        )
    return load_arrays(raw_file)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) → float32 in [0, 1]."""
    return images.astype(np.float32) / np.float32(255)


def split_validation(x: np.ndarray, y: np.ndarray, size: int, seed: int) -> Arrays:
    """Hold out `size` random training images (seeded) for validation."""
    if not 0 < size < len(x):
        raise DataError(f"data.validation_size = {size} must be between 1 and {len(x) - 1}")
    order = np.random.default_rng(seed).permutation(len(x))
    held_out, kept = np.sort(order[:size]), np.sort(order[size:])
    return {"x_train": x[kept], "y_train": y[kept], "x_val": x[held_out], "y_val": y[held_out]}


def check_split(name: str, x: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Check shapes, dtypes and labels of one split; return what was checked."""
    problems = []
    if x.ndim != 3 or x.shape[1:] != config.IMAGE_SHAPE or x.shape[0] != y.shape[0] or y.ndim != 1:
        problems.append(f"shapes x {x.shape}, y {y.shape}")
    if x.dtype != np.float32 or not (x.min() >= 0.0 and x.max() <= 1.0):
        problems.append(f"pixels {x.dtype} in [{x.min()}, {x.max()}], expected float32 in [0, 1]")
    if y.dtype != np.uint8 or y.max() >= n_classes:
        problems.append(f"labels {y.dtype} up to {y.max()}, expected uint8 below {n_classes}")
    counts = np.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        problems.append(f"classes with no images: {np.flatnonzero(counts == 0).tolist()}")
    if problems:
        raise DataError(f"{name} split failed its checks: " + "; ".join(problems))
    return {
        "images": int(x.shape[0]),
        "shape": list(x.shape[1:]),
        "dtype": str(x.dtype),
        "pixel_range": [float(x.min()), float(x.max())],
        "class_counts": counts.tolist(),
    }


def run(params: config.Params) -> dict:
    """Write the train/val/test splits and the data report; return the report."""
    raw = load_raw(params.paths)
    splits = split_validation(
        scale(raw["x_train"]), raw["y_train"], params.data.validation_size, params.seed
    )
    splits |= {"x_test": scale(raw["x_test"]), "y_test": raw["y_test"]}
    report = {"seed": params.seed, "splits": {}}
    for split in SPLITS:
        x, y = splits[f"x_{split}"], splits[f"y_{split}"]
        report["splits"][split] = check_split(split, x, y, params.model.n_classes)
        save_arrays(params.paths.split(split), {"x": x, "y": y})
        log.info(
            "%s: %d images, class counts %s", split, len(x), report["splits"][split]["class_counts"]
        )
    write_json(params.paths.data_report, report)
    return report


def main(argv: list[str] | None = None) -> None:
    stage.run_stage(run, argv, __doc__, expected=(DataError,))


if __name__ == "__main__":
    main()
